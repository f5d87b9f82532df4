// The world a command works on, wired in main.ts and handed to each command, so commands stay
// testable and never import adapters as singletons.

import type { Config } from "../core/config-model.js";
import { formatProblem } from "../core/config.js";
import { isImdsGuardError } from "../core/errors.js";
import type { CommandRunner } from "../adapters/command-runner.js";
import type { LoadResult } from "../adapters/config-file.js";
import type { IdentityLookup } from "../adapters/identity.js";
import type { Dataplane } from "../daemon/dataplane.js";
import { openDataplane } from "../daemon/dataplane.js";
import { heldDenialsFrom } from "../daemon/held-denials.js";
import type { ResolvedPolicy } from "../daemon/policy.js";
import { resolvePolicy } from "../daemon/policy.js";

export interface Runtime {
  readonly run: CommandRunner;
  readonly lookup: IdentityLookup;
  readonly loadConfig: (path: string) => Promise<LoadResult>;
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
export async function configOrExit(
  runtime: Runtime,
  path: string,
): Promise<{ config: Config; warnings: string[]; digest: string }> {
  let loaded: LoadResult;
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

export interface Prepared {
  readonly config: Config;
  readonly warnings: readonly string[];
  readonly dataplane: Dataplane;
  readonly policy: ResolvedPolicy;
}

/**
 * What plan, apply and status all start with: the valid config, the iptables flavour and
 * families, and the policy resolved against NSS (and, for a deny-list with unresolved names,
 * the denials the kernel already holds). Every warning is collected, none printed.
 */
export async function prepare(runtime: Runtime, configPath: string): Promise<Prepared> {
  const { config, warnings } = await configOrExit(runtime, configPath);
  const dataplane = await openDataplane(runtime, config.backend);
  const policy = await resolvePolicy(
    config,
    runtime.lookup,
    heldDenialsFrom(dataplane.iptables, dataplane.families),
  );
  return {
    config,
    dataplane,
    policy,
    warnings: [...warnings, ...dataplane.warnings, ...policy.unresolved],
  };
}
