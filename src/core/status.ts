// What an operator wants to see about one family: is it installed, does it match the policy,
// where do our jumps stand, and how many packets each principal had allowed or refused.
// Pure: built from the desired ruleset and one parsed iptables-save.

import type { Family } from "./config-model.js";
import type { DriftFinding } from "./diff.js";
import { diffFamily } from "./diff.js";
import type { ObservedTable, SavedRule } from "./iptables-save.js";
import { ourRulesIn } from "./iptables-save.js";
import type { Principals } from "./principals.js";
import type { DesiredFamily, RuleRole } from "./ruleset.js";
import { CHAIN, OUR_CHAINS, REFUSE_CHAIN } from "./ruleset.js";

export interface PrincipalCounter {
  readonly owner: "uid" | "gid";
  readonly id: number;
  readonly names: readonly string[];
  readonly verdict: "allowed" | "refused";
  /** Packets that matched this principal's rule since the rule was (re)written. */
  readonly packets: number;
}

export interface FamilyStatus {
  readonly family: Family;
  /** Any of our chains or jumps is in the kernel. */
  readonly installed: boolean;
  readonly inSync: boolean;
  readonly findings: readonly DriftFinding[];
  readonly targets: readonly string[];
  readonly jumps: readonly { readonly position: number; readonly spec: string }[];
  readonly principals: readonly PrincipalCounter[];
  /** TCP connection attempts (SYNs) that reached our chain, and those refused (or, in audit, that would be). */
  readonly attempts: number;
  readonly refused: number;
  readonly rules: number;
}

function namesFor(principals: Principals, owner: "uid" | "gid", id: number): string[] {
  const names = new Set<string>();
  for (const entry of principals.entries) {
    if (owner === "uid" && entry.kind === "user" && entry.uid === id && entry.name)
      names.add(entry.name);
    if (owner === "uid" && entry.kind === "group") {
      for (const member of entry.members) if (member.uid === id) names.add(member.name);
    }
    if (owner === "gid" && entry.kind === "group" && entry.gid === id && entry.name)
      names.add(entry.name);
  }
  return [...names].sort();
}

function packetsByTag(observed: ObservedTable): Map<string, SavedRule> {
  const byTag = new Map<string, SavedRule>();
  for (const chain of OUR_CHAINS) {
    for (const rule of observed.chains.get(chain) ?? []) {
      if (rule.tag !== undefined) byTag.set(rule.tag, rule);
    }
  }
  return byTag;
}

function counterOf(
  desired: DesiredFamily,
  byTag: Map<string, SavedRule>,
  kind: RuleRole["kind"],
): number {
  let packets = 0;
  for (const chain of desired.chains) {
    for (const rule of chain.rules)
      if (rule.role.kind === kind) packets += byTag.get(rule.tag)?.packets ?? 0;
  }
  return packets;
}

export function familyStatus(
  desired: DesiredFamily,
  observed: ObservedTable,
  principals: Principals,
): FamilyStatus {
  const plan = diffFamily(desired, observed);
  const byTag = packetsByTag(observed);
  const counters: PrincipalCounter[] = [];
  for (const chain of desired.chains) {
    for (const rule of chain.rules) {
      const role = rule.role;
      if (role.kind !== "allow" && role.kind !== "deny") continue;
      counters.push({
        owner: role.owner,
        id: role.id,
        names: namesFor(principals, role.owner, role.id),
        verdict: role.kind === "allow" ? "allowed" : "refused",
        packets: byTag.get(rule.tag)?.packets ?? 0,
      });
    }
  }
  const ourJumps = ourRulesIn(observed, "OUTPUT");
  const installed =
    ourJumps.length > 0 || observed.chains.has(CHAIN) || observed.chains.has(REFUSE_CHAIN);
  const rules =
    ourJumps.length +
    OUR_CHAINS.reduce((sum, name) => sum + (observed.chains.get(name)?.length ?? 0), 0);
  return {
    family: desired.family,
    installed,
    inSync: plan.findings.length === 0,
    findings: plan.findings,
    targets: [
      ...new Set(desired.jumps.map((jump) => (jump.role.kind === "jump" ? jump.role.target : ""))),
    ],
    jumps: ourJumps.map((rule) => ({ position: rule.position, spec: rule.spec })),
    principals: counters,
    attempts: counterOf(desired, byTag, "count-attempts"),
    refused: counterOf(desired, byTag, "count-refused"),
    rules,
  };
}
