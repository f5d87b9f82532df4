// The world a command works on, wired in main.ts and handed to each command, so commands stay
// testable and never import adapters as singletons.

import type { Config, Family } from "../core/config-model.js";
import { FAMILIES } from "../core/config-model.js";
import type { ConfigProblem } from "../core/config.js";
import { formatProblem } from "../core/config.js";
import { isImdsGuardError } from "../core/errors.js";
import type { CommandRunner } from "../adapters/command-runner.js";
import type { BackendDecision } from "../adapters/backend-detect.js";
import { detectBackend } from "../adapters/backend-detect.js";
import type { IdentityLookup } from "../adapters/identity.js";
import type { IptablesBackend } from "../adapters/iptables.js";
import { createIptables } from "../adapters/iptables.js";
import type { BackendChoice } from "../core/config-model.js";

export type LoadedConfig =
  | { ok: true; config: Config; warnings: string[]; digest: string }
  | { ok: false; problems: ConfigProblem[] };

export interface Runtime {
  readonly run: CommandRunner;
  readonly lookup: IdentityLookup;
  readonly loadConfig: (path: string) => Promise<LoadedConfig>;
  readonly legacyTablesLoaded: () => Promise<boolean>;
  readonly ipv6Enabled: () => Promise<boolean>;
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
}

export const EXIT = { ok: 0, failure: 1, usage: 2, pending: 3 } as const;

export class CommandExit extends Error {
  constructor(readonly exitCode: number) {
    super(`exit ${exitCode}`);
  }
}

/** Loads and validates the config, or prints every problem and exits 1. */
export async function configOrExit(runtime: Runtime, path: string): Promise<{ config: Config; warnings: string[]; digest: string }> {
  let loaded: LoadedConfig;
  try {
    loaded = await runtime.loadConfig(path);
  } catch (error) {
    if (isImdsGuardError(error)) {
      runtime.err(`error [${error.code}]: ${error.message}`);
      throw new CommandExit(EXIT.failure);
    }
    throw error;
  }
  if (!loaded.ok) {
    for (const problem of loaded.problems) runtime.err(formatProblem(problem));
    runtime.err(`${path}: ${loaded.problems.length} problem(s); nothing was changed`);
    throw new CommandExit(EXIT.failure);
  }
  return loaded;
}

export interface Dataplane {
  readonly decision: BackendDecision;
  readonly iptables: IptablesBackend;
  /** Families we can guard on this host; IPv6 drops out, with a warning, when unusable. */
  readonly families: readonly Family[];
  readonly warnings: readonly string[];
}

export async function openDataplane(runtime: Runtime, choice: BackendChoice): Promise<Dataplane> {
  const decision = await detectBackend(runtime.run, choice, runtime.legacyTablesLoaded);
  const iptables = createIptables(runtime.run, decision.flavour);
  const warnings: string[] = [];
  if (decision.otherFlavourHoldsRules) {
    const other = decision.flavour === "nft" ? "legacy" : "nft";
    warnings.push(`iptables-${other} also holds rules; they still filter packets alongside ours (using iptables-${decision.flavour}: ${decision.reason})`);
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
        warnings.push(`ip6tables is unusable, IPv6 targets are skipped: ${error instanceof Error ? error.message : String(error)}`);
        continue;
      }
    }
    families.push(family);
  }
  return { decision, iptables, families, warnings };
}
