// Turns the users and groups named in the config into the uids and gids the kernel matches.
// Pure over an NSS snapshot. Never widens access: a name NSS does not know is dropped from an
// allow-list (so it allows nobody) and reported; in a deny-list it is reported as an error.

import type { Policy, PrincipalSpec } from "./config-model.js";
import type { GroupEntry, NssSnapshot, PasswdEntry } from "./nss.js";

export type PrincipalState = "resolved" | "numeric" | "unresolved";

export interface ResolvedUser {
  readonly kind: "user";
  /** As written in the config. */
  readonly spec: string;
  readonly state: PrincipalState;
  readonly name?: string;
  readonly uid?: number;
}

export interface ResolvedGroup {
  readonly kind: "group";
  readonly spec: string;
  readonly state: PrincipalState;
  readonly name?: string;
  readonly gid?: number;
  /** Current members: listed in the group entry, or whose primary group it is. */
  readonly members: readonly { readonly name: string; readonly uid: number }[];
}

export type ResolvedPrincipal = ResolvedUser | ResolvedGroup;

/** Invariant: uids and gids are sorted ascending and free of duplicates. */
export interface Principals {
  readonly policy: Policy;
  readonly uids: readonly number[];
  readonly gids: readonly number[];
  readonly entries: readonly ResolvedPrincipal[];
  readonly unresolved: readonly ResolvedPrincipal[];
}

const NUMERIC_ID = /^\d+$/;

function findUser(snapshot: NssSnapshot, spec: string): PasswdEntry | undefined {
  if (NUMERIC_ID.test(spec)) {
    const uid = Number(spec);
    return snapshot.passwd.find((entry) => entry.uid === uid);
  }
  return snapshot.passwd.find((entry) => entry.name === spec);
}

function findGroup(snapshot: NssSnapshot, spec: string): GroupEntry | undefined {
  if (NUMERIC_ID.test(spec)) {
    const gid = Number(spec);
    return snapshot.groups.find((entry) => entry.gid === gid);
  }
  return snapshot.groups.find((entry) => entry.name === spec);
}

function resolveUser(snapshot: NssSnapshot, spec: string): ResolvedUser {
  const entry = findUser(snapshot, spec);
  if (entry) return { kind: "user", spec, state: "resolved", name: entry.name, uid: entry.uid };
  // A numeric uid needs no account: a service account may be created after the policy.
  if (NUMERIC_ID.test(spec)) return { kind: "user", spec, state: "numeric", uid: Number(spec) };
  return { kind: "user", spec, state: "unresolved" };
}

function groupMembers(snapshot: NssSnapshot, group: GroupEntry): { name: string; uid: number }[] {
  const members = new Map<number, string>();
  for (const memberName of group.members) {
    const user = snapshot.passwd.find((entry) => entry.name === memberName);
    if (user) members.set(user.uid, user.name);
  }
  for (const user of snapshot.passwd) {
    if (user.gid === group.gid) members.set(user.uid, user.name);
  }
  return [...members.entries()].sort(([a], [b]) => a - b).map(([uid, name]) => ({ name, uid }));
}

function resolveGroup(snapshot: NssSnapshot, spec: string): ResolvedGroup {
  const entry = findGroup(snapshot, spec);
  if (entry) {
    return {
      kind: "group",
      spec,
      state: "resolved",
      name: entry.name,
      gid: entry.gid,
      members: groupMembers(snapshot, entry),
    };
  }
  if (NUMERIC_ID.test(spec)) {
    return { kind: "group", spec, state: "numeric", gid: Number(spec), members: [] };
  }
  return { kind: "group", spec, state: "unresolved", members: [] };
}

function sortedUnique(ids: Iterable<number>): number[] {
  return [...new Set(ids)].sort((a, b) => a - b);
}

export function resolvePrincipals(
  policy: Policy,
  spec: PrincipalSpec,
  snapshot: NssSnapshot,
): Principals {
  const users = spec.users.map((user) => resolveUser(snapshot, user));
  const groups = spec.groups.map((group) => resolveGroup(snapshot, group));
  const uids: number[] = [];
  const gids: number[] = [];
  for (const user of users) if (user.uid !== undefined) uids.push(user.uid);
  for (const group of groups) {
    if (group.gid !== undefined) gids.push(group.gid);
    for (const member of group.members) uids.push(member.uid);
  }
  const entries: ResolvedPrincipal[] = [...users, ...groups];
  return {
    policy,
    uids: sortedUnique(uids),
    gids: sortedUnique(gids),
    entries,
    unresolved: entries.filter((entry) => entry.state === "unresolved"),
  };
}

/**
 * A deny-list must never shrink because NSS stopped answering (LDAP down, a group deleted by
 * mistake): while any denied name is unresolved, the ids the kernel already refuses are kept.
 * Returns the principals unchanged when nothing is unresolved or the policy is an allow-list.
 */
export function retainDenials(
  principals: Principals,
  held: { readonly uids: readonly number[]; readonly gids: readonly number[] },
): { principals: Principals; retained: { uids: number[]; gids: number[] } } {
  if (principals.policy !== "deny" || principals.unresolved.length === 0) {
    return { principals, retained: { uids: [], gids: [] } };
  }
  const retained = {
    uids: sortedUnique(held.uids.filter((id) => !principals.uids.includes(id))),
    gids: sortedUnique(held.gids.filter((id) => !principals.gids.includes(id))),
  };
  return {
    principals: {
      ...principals,
      uids: sortedUnique([...principals.uids, ...retained.uids]),
      gids: sortedUnique([...principals.gids, ...retained.gids]),
    },
    retained,
  };
}

export function describeUnresolved(policy: Policy, principal: ResolvedPrincipal): string {
  const what = `${principal.kind} "${principal.spec}"`;
  return policy === "allow"
    ? `${what} is not known to NSS (getent); it allows nobody until it exists`
    : `${what} is not known to NSS (getent); ids the kernel already refuses stay refused, but it cannot be refused by name until NSS knows it (a numeric id refuses in advance)`;
}
