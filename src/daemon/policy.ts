// From a validated config to the ruleset the kernel should hold: resolve the principals
// through the injected NSS lookup, then render. Unresolved names never widen access: in an
// allow-list they allow nobody; in a deny-list the ids the kernel already refuses are kept
// (read through `heldDenials`) until NSS answers again.

import type { Config } from "../core/config-model.js";
import type { Principals } from "../core/principals.js";
import { describeUnresolved, resolvePrincipals, retainDenials } from "../core/principals.js";
import type { DesiredRuleset } from "../core/ruleset.js";
import { renderDesired } from "../core/ruleset.js";
import type { IdentityLookup } from "../adapters/identity.js";

export interface ResolvedPolicy {
  readonly config: Config;
  readonly principals: Principals;
  readonly desired: DesiredRuleset;
  /** One line per principal NSS does not know (and per deny rule kept because of it). */
  readonly unresolved: readonly string[];
}

export type HeldDenials = () => Promise<{ uids: number[]; gids: number[] }>;

export async function resolvePolicy(
  config: Config,
  lookup: IdentityLookup,
  heldDenials?: HeldDenials,
): Promise<ResolvedPolicy> {
  const snapshot = await lookup(config.principals);
  const resolved = resolvePrincipals(config.policy, config.principals, snapshot);
  const unresolved = resolved.unresolved.map((entry) => describeUnresolved(config.policy, entry));
  let principals = resolved;
  if (config.policy === "deny" && resolved.unresolved.length > 0 && heldDenials) {
    const kept = retainDenials(resolved, await heldDenials());
    principals = kept.principals;
    if (kept.retained.uids.length + kept.retained.gids.length > 0) {
      unresolved.push(
        `keeping the refusal of uid(s) [${kept.retained.uids.join(", ")}] and gid(s) [${kept.retained.gids.join(", ")}] already in the kernel while a denied name is unresolved`,
      );
    }
  }
  return { config, principals, desired: renderDesired(config, principals), unresolved };
}
