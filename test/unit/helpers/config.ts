// Config and Principals literals for core tests. Built directly, never through config.ts, so
// the core's tests do not depend on how the YAML is parsed or validated.

import type { Config } from "../../../src/core/config-model.js";
import type { Principals } from "../../../src/core/principals.js";

export const IMDS_V4 = "169.254.169.254/32";
export const IMDS_V6 = "fd00:ec2::254/128";

const BASE: Config = {
  mode: "enforce",
  policy: "allow",
  principals: { users: [], groups: [] },
  targets: { ipv4: [IMDS_V4], ipv6: [IMDS_V6] },
  protocols: "all",
  backend: "auto",
  driftCheckIntervalMs: 30_000,
  nssRefreshIntervalMs: 300_000,
  listen: { host: "127.0.0.1", port: 9183 },
  listenNonLoopback: false,
  logDenied: true,
};

export function makeConfig(overrides: Partial<Config> = {}): Config {
  return { ...BASE, ...overrides };
}

/**
 * Principals as resolvePrincipals would return them for numeric ids only. Sorts and dedupes so
 * the invariant declared on Principals holds whatever the caller passes.
 */
export function makePrincipals(
  policy: Config["policy"],
  uids: readonly number[] = [],
  gids: readonly number[] = [],
): Principals {
  const sorted = (ids: readonly number[]): number[] => [...new Set(ids)].sort((a, b) => a - b);
  return {
    policy,
    uids: sorted(uids),
    gids: sorted(gids),
    entries: [
      ...uids.map((uid) => ({
        kind: "user" as const,
        spec: String(uid),
        state: "numeric" as const,
        uid,
      })),
      ...gids.map((gid) => ({
        kind: "group" as const,
        spec: String(gid),
        state: "numeric" as const,
        gid,
        members: [],
      })),
    ],
    unresolved: [],
  };
}
