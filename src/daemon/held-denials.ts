// Reads which ids the kernel refuses right now, for a deny-list that has unresolved names
// (see core/principals.ts retainDenials). Reads only.

import type { Family } from "../core/config-model.js";
import { deniedIdsIn, parseIptablesSave } from "../core/iptables-save.js";
import { CHAIN, REFUSE_CHAIN } from "../core/ruleset.js";
import type { IptablesBackend } from "../adapters/iptables.js";
import type { HeldDenials } from "./policy.js";

export function heldDenialsFrom(
  iptables: IptablesBackend,
  families: readonly Family[],
): HeldDenials {
  return async () => {
    const uids: number[] = [];
    const gids: number[] = [];
    for (const family of families) {
      let text: string;
      try {
        text = await iptables.save(family);
      } catch {
        // That family's own reconcile reports the failure; it must not stop the others.
        continue;
      }
      const held = deniedIdsIn(parseIptablesSave(text), CHAIN, REFUSE_CHAIN);
      uids.push(...held.uids);
      gids.push(...held.gids);
    }
    return { uids, gids };
  };
}
