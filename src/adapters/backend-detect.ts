// Chooses the iptables flavour for `backend: auto` the way Felix and kubernetes'
// iptables-wrappers do: prefer the flavour that already holds rules (ours first), probe legacy
// only when its kernel tables are loaded (probing would load them), default to nft.

import type { BackendChoice } from "../core/config-model.js";
import { TAG_PREFIX } from "../core/rule-text.js";
import type { CommandRunner } from "./command-runner.js";
import type { Flavour } from "./iptables.js";
import { binary } from "./iptables.js";

export interface BackendDecision {
  readonly flavour: Flavour;
  readonly reason: string;
  /** Both flavours hold rules: the other one still filters packets, so say so. */
  readonly otherFlavourHoldsRules: boolean;
}

interface FlavourLook {
  readonly rules: number;
  readonly ours: number;
}

async function look(run: CommandRunner, flavour: Flavour): Promise<FlavourLook> {
  let rules = 0;
  let ours = 0;
  for (const family of ["ipv4", "ipv6"] as const) {
    const result = await run(binary(family, flavour, "save"), [], { timeoutMs: 10_000 });
    if (result.exitCode !== 0) continue;
    for (const line of result.stdout.split("\n")) {
      if (!line.startsWith("-A ")) continue;
      rules++;
      if (line.includes(TAG_PREFIX)) ours++;
    }
  }
  return { rules, ours };
}

export async function detectBackend(
  run: CommandRunner,
  choice: BackendChoice,
  legacyTablesLoaded: () => Promise<boolean>,
): Promise<BackendDecision> {
  const legacyLoaded = await legacyTablesLoaded();
  const nft = await look(run, "nft");
  const legacy: FlavourLook = legacyLoaded ? await look(run, "legacy") : { rules: 0, ours: 0 };
  if (choice !== "auto") {
    const other = choice === "nft" ? legacy : nft;
    return {
      flavour: choice,
      reason: `backend: ${choice} in the config`,
      otherFlavourHoldsRules: other.rules > 0,
    };
  }
  const both = nft.rules > 0 && legacy.rules > 0;
  if (legacy.ours > 0 && nft.ours === 0) {
    return {
      flavour: "legacy",
      reason: "iptables-legacy already holds imds-guard rules",
      otherFlavourHoldsRules: nft.rules > 0,
    };
  }
  if (nft.ours > 0) {
    return {
      flavour: "nft",
      reason: "iptables-nft already holds imds-guard rules",
      otherFlavourHoldsRules: legacy.rules > 0,
    };
  }
  if (legacy.rules > nft.rules) {
    return {
      flavour: "legacy",
      reason: `iptables-legacy holds ${legacy.rules} rule(s), iptables-nft ${nft.rules}`,
      otherFlavourHoldsRules: both,
    };
  }
  return {
    flavour: "nft",
    reason:
      nft.rules > 0
        ? `iptables-nft holds ${nft.rules} rule(s)`
        : "no rules in either flavour; nft is the default",
    otherFlavourHoldsRules: both,
  };
}
