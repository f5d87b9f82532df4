// The iptables flavour and the families this host can guard, chosen once and reused: which
// flavour (backend detection), and whether IPv6 is usable. IPv6 problems never stop IPv4.

import type { BackendChoice, Family } from "../core/config-model.js";
import { FAMILIES } from "../core/config-model.js";
import type { BackendDecision } from "../adapters/backend-detect.js";
import { detectBackend } from "../adapters/backend-detect.js";
import type { CommandRunner } from "../adapters/command-runner.js";
import type { IptablesBackend } from "../adapters/iptables.js";
import { createIptables } from "../adapters/iptables.js";

export interface HostProbes {
  readonly run: CommandRunner;
  readonly legacyTablesLoaded: () => Promise<boolean>;
  readonly ipv6Enabled: () => Promise<boolean>;
}

export interface Dataplane {
  readonly decision: BackendDecision;
  readonly iptables: IptablesBackend;
  /** Families we can guard on this host; IPv6 drops out, with a warning, when unusable. */
  readonly families: readonly Family[];
  readonly warnings: readonly string[];
}

export async function openDataplane(
  runtime: HostProbes,
  choice: BackendChoice,
): Promise<Dataplane> {
  const decision = await detectBackend(runtime.run, choice, runtime.legacyTablesLoaded);
  const iptables = createIptables(runtime.run, decision.flavour);
  const warnings: string[] = [];
  if (decision.otherFlavourHoldsRules) {
    const other = decision.flavour === "nft" ? "legacy" : "nft";
    warnings.push(
      `iptables-${other} also holds rules; they still filter packets alongside ours (using iptables-${decision.flavour}: ${decision.reason})`,
    );
  }
  const families: Family[] = [];
  for (const family of FAMILIES) {
    if (family === "ipv6") {
      if (!(await runtime.ipv6Enabled())) {
        warnings.push("IPv6 is disabled on this host; IPv6 targets are skipped");
        continue;
      }
      try {
        await iptables.save("ipv6");
      } catch (error) {
        warnings.push(
          `ip6tables is unusable, IPv6 targets are skipped: ${error instanceof Error ? error.message : String(error)}`,
        );
        continue;
      }
    }
    families.push(family);
  }
  return { decision, iptables, families, warnings };
}
