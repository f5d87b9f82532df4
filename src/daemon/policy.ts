// From a validated config to the ruleset the kernel should hold: resolve the principals
// through the injected NSS lookup, then render. Unresolved names never widen access (see
// core/principals.ts); here they only become warnings or, for a deny-list, errors.

import type { Config } from "../core/config-model.js";
import type { Principals } from "../core/principals.js";
import { describeUnresolved, resolvePrincipals } from "../core/principals.js";
import type { DesiredRuleset } from "../core/ruleset.js";
import { renderDesired } from "../core/ruleset.js";
import type { IdentityLookup } from "../adapters/identity.js";

export interface ResolvedPolicy {
  readonly config: Config;
  readonly principals: Principals;
  readonly desired: DesiredRuleset;
  /** One line per principal NSS does not know. */
  readonly unresolved: readonly string[];
}

export async function resolvePolicy(
  config: Config,
  lookup: IdentityLookup,
): Promise<ResolvedPolicy> {
  const snapshot = await lookup(config.principals);
  const principals = resolvePrincipals(config.policy, config.principals, snapshot);
  return {
    config,
    principals,
    desired: renderDesired(config, principals),
    unresolved: principals.unresolved.map((entry) => describeUnresolved(config.policy, entry)),
  };
}
