// Asks NSS (getent) about the configured users and groups, so local, LDAP and SSSD accounts
// all resolve the way the rest of the system sees them. One call per kind for the whole list.
// getent exits 2 when some keys are unknown; what it printed for the others still counts.

import type { PrincipalSpec } from "../core/config-model.js";
import { ImdsGuardError } from "../core/errors.js";
import type { GroupEntry, NssSnapshot, PasswdEntry } from "../core/nss.js";
import { parseGroup, parsePasswd } from "../core/nss.js";
import type { CommandRunner } from "./command-runner.js";

const NOT_FOUND = 2;

async function getent(
  run: CommandRunner,
  database: string,
  keys: readonly string[],
): Promise<string> {
  const result = await run("getent", [database, ...keys], { timeoutMs: 15_000 });
  if (result.exitCode === 0 || result.exitCode === NOT_FOUND) return result.stdout;
  throw new ImdsGuardError(
    "IMDSG_NSS_LOOKUP",
    `getent ${database} failed (exit ${result.exitCode}): ${result.stderr.trim()}`,
    {
      database,
      stderr: result.stderr,
    },
  );
}

function uniqueBy<T>(items: readonly T[], key: (item: T) => string): T[] {
  const seen = new Map<string, T>();
  for (const item of items) if (!seen.has(key(item))) seen.set(key(item), item);
  return [...seen.values()];
}

export type IdentityLookup = (spec: PrincipalSpec) => Promise<NssSnapshot>;

export function createIdentityLookup(run: CommandRunner): IdentityLookup {
  return async (spec) => {
    const groups: GroupEntry[] =
      spec.groups.length > 0 ? parseGroup(await getent(run, "group", spec.groups)) : [];
    const memberNames = groups.flatMap((group) => group.members);
    const userKeys = [...new Set([...spec.users, ...memberNames])];
    const passwd: PasswdEntry[] =
      userKeys.length > 0 ? parsePasswd(await getent(run, "passwd", userKeys)) : [];
    // Users whose *primary* group is one of ours appear in no group entry: enumerate to find
    // them (SSSD may not enumerate remote users; their explicit memberships still resolve).
    const everyone = groups.length > 0 ? parsePasswd(await getent(run, "passwd", [])) : [];
    return {
      passwd: uniqueBy([...passwd, ...everyone], (entry) => `${entry.name}:${entry.uid}`),
      groups: uniqueBy(groups, (entry) => `${entry.name}:${entry.gid}`),
    };
  };
}
