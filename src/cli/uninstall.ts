// `imds-guard uninstall`: remove our jumps and chains from both families and both flavours,
// touching nothing else. Idempotent. The only way our rules ever leave the kernel.

import type { Family } from "../core/config-model.js";
import { FAMILIES } from "../core/config-model.js";
import { absentFamily } from "../core/ruleset.js";
import type { Flavour } from "../adapters/iptables.js";
import { createIptables } from "../adapters/iptables.js";
import { reconcileFamily } from "../daemon/reconcile.js";
import type { Runtime } from "./runtime.js";
import { EXIT } from "./runtime.js";

export async function uninstallCommand(runtime: Runtime): Promise<number> {
  const flavours: Flavour[] = (await runtime.legacyTablesLoaded()) ? ["nft", "legacy"] : ["nft"];
  let failed = false;
  for (const flavour of flavours) {
    const iptables = createIptables(runtime.run, flavour);
    const families: Family[] = (await runtime.ipv6Enabled()) ? [...FAMILIES] : ["ipv4"];
    for (const family of families) {
      const outcome = await reconcileFamily(iptables, absentFamily(family), true);
      if (outcome.error) {
        // A flavour whose tools cannot even read holds nothing of ours to remove.
        if (outcome.error.code === "IMDSG_IPTABLES_SAVE") continue;
        failed = true;
        runtime.err(
          `${family} (${flavour}): error [${outcome.error.code}]: ${outcome.error.message}`,
        );
        continue;
      }
      runtime.out(
        `${family} (iptables-${flavour}): ${outcome.wrote ? "removed imds-guard rules" : "nothing of ours installed"}`,
      );
    }
  }
  return failed ? EXIT.failure : EXIT.ok;
}
