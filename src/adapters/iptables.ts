// The only module that reads or writes the kernel's iptables rules. Reads with *-save -c,
// writes with one *-restore --noflush transaction per family (stdin), honouring the xtables
// lock. Never edits rules itself: what to write is decided by the pure core.

import type { Family } from "../core/config-model.js";
import { ImdsGuardError } from "../core/errors.js";
import type { CommandRunner } from "./command-runner.js";

export type Flavour = "nft" | "legacy";

export interface IptablesBackend {
  readonly flavour: Flavour;
  save(family: Family): Promise<string>;
  restore(family: Family, script: string): Promise<void>;
}

const LOCK_EXIT_CODE = 4;
const LOCK_RETRIES = 5;

export function binary(family: Family, flavour: Flavour, tool: "save" | "restore"): string {
  return `${family === "ipv4" ? "iptables" : "ip6tables"}-${flavour}-${tool}`;
}

export interface IptablesOptions {
  readonly sleep?: (ms: number) => Promise<void>;
  readonly timeoutMs?: number;
}

const defaultSleep = (ms: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, ms));

export function createIptables(
  run: CommandRunner,
  flavour: Flavour,
  options: IptablesOptions = {},
): IptablesBackend {
  const sleep = options.sleep ?? defaultSleep;
  const timeoutMs = options.timeoutMs ?? 20_000;
  return {
    flavour,
    async save(family) {
      const file = binary(family, flavour, "save");
      const result = await run(file, ["-c"], { timeoutMs });
      if (result.exitCode !== 0) {
        throw new ImdsGuardError(
          "IMDSG_IPTABLES_SAVE",
          `${file} -c failed (exit ${result.exitCode}): ${result.stderr.trim()}`,
          {
            family,
            flavour,
            stderr: result.stderr,
            timedOut: result.timedOut,
          },
        );
      }
      return result.stdout;
    },
    async restore(family, script) {
      const file = binary(family, flavour, "restore");
      let lastStderr = "";
      for (let attempt = 0; attempt < LOCK_RETRIES; attempt++) {
        const result = await run(file, ["--noflush", "--wait", "5"], { input: script, timeoutMs });
        if (result.exitCode === 0) return;
        lastStderr = result.stderr;
        if (result.exitCode !== LOCK_EXIT_CODE) {
          throw new ImdsGuardError(
            "IMDSG_IPTABLES_RESTORE",
            `${file} --noflush failed (exit ${result.exitCode}): ${result.stderr.trim()}`,
            { family, flavour, input: script, stderr: result.stderr, timedOut: result.timedOut },
          );
        }
        // Someone else holds the xtables lock: back off and try again.
        await sleep(100 * 2 ** attempt);
      }
      throw new ImdsGuardError(
        "IMDSG_IPTABLES_LOCK",
        `${file}: the xtables lock stayed busy after ${LOCK_RETRIES} tries`,
        {
          family,
          flavour,
          input: script,
          stderr: lastStderr,
        },
      );
    },
  };
}
