// A stand-in for the kernel behind IptablesBackend: per-family filter tables that save() prints
// the way iptables-save -c does and restore() changes the way iptables-restore --noflush does,
// all or nothing (save-text.ts applyRestore is the strict model of a restore; reused, not
// copied). It records every script it is given and can be told to fail, so daemon tests can
// assert the exact writes, and it lets a test play the operator who edits the table by hand.

import type { Family } from "../../../src/core/config-model.js";
import { ImdsGuardError } from "../../../src/core/errors.js";
import type { Flavour, IptablesBackend } from "../../../src/adapters/iptables.js";
import { binary } from "../../../src/adapters/iptables.js";
import { tokenizeRule } from "../../../src/core/rule-text.js";
import type { SaveChain } from "./save-text.js";
import { applyRestore, renderSave } from "./save-text.js";

export interface RecordedRestore {
  readonly family: Family;
  readonly script: string;
}

export interface FakeIptables extends IptablesBackend {
  /** Every script restore() was given, failed ones included, in call order. */
  readonly restores: RecordedRestore[];
  /** Every save() call, failed ones included, in call order. */
  readonly saves: Family[];
  /** A deep copy of one family's filter table (built-in chains first, then user chains). */
  chains(family: Family): SaveChain[];
  /** The rules of one chain as `-A CHAIN <spec>` would list them; undefined when it does not exist. */
  rules(family: Family, chain: string): string[] | undefined;
  /**
   * Runs one iptables command against the table directly, as an operator or another firewall
   * manager would: `-F CHAIN`, `-N CHAIN`, `-X CHAIN`, `-A CHAIN spec`, `-I CHAIN [N] spec`,
   * `-D CHAIN spec`. Not recorded as a restore. Throws like iptables does on a bad command.
   */
  iptables(family: Family, command: string): void;
  /**
   * The next restore (of `family`, or of any family) throws `error` and changes nothing; with
   * `times`, that many restores in a row fail.
   */
  failNextRestore(error?: Error, options?: { family?: Family; times?: number }): void;
  /** The next `n` saves (of `family`, or of any family) throw, as a broken ip(6)tables-save would. */
  failSaves(n: number, family?: Family): void;
}

const BUILT_IN = ["INPUT", "FORWARD", "OUTPUT"];

function emptyTable(): SaveChain[] {
  return BUILT_IN.map((name) => ({ name, policy: "ACCEPT", rules: [] }));
}

function copy(chains: readonly SaveChain[]): SaveChain[] {
  return chains.map((chain) => ({ ...chain, rules: [...chain.rules] }));
}

/** What the real runner throws for a restore the kernel refused. */
export function restoreError(
  family: Family,
  flavour: Flavour,
  script: string,
  stderr: string,
): ImdsGuardError {
  const file = binary(family, flavour, "restore");
  return new ImdsGuardError(
    "IMDSG_IPTABLES_RESTORE",
    `${file} --noflush failed (exit 1): ${stderr.trim()}`,
    { family, flavour, input: script, stderr, timedOut: false },
  );
}

function saveError(family: Family, flavour: Flavour): ImdsGuardError {
  const file = binary(family, flavour, "save");
  const stderr = `${file}: Could not fetch rule set generation id: Invalid argument\n`;
  return new ImdsGuardError("IMDSG_IPTABLES_SAVE", `${file} -c failed (exit 1): ${stderr.trim()}`, {
    family,
    flavour,
    stderr,
    timedOut: false,
  });
}

interface PendingFailure {
  readonly error: Error | undefined;
  readonly family: Family | undefined;
  remaining: number;
}

export function createFakeIptables(flavour: Flavour = "nft"): FakeIptables {
  const tables: Record<Family, SaveChain[]> = { ipv4: emptyTable(), ipv6: emptyTable() };
  const restores: RecordedRestore[] = [];
  const saves: Family[] = [];
  const restoreFailures: PendingFailure[] = [];
  const saveFailures: PendingFailure[] = [];

  const take = (queue: PendingFailure[], family: Family): PendingFailure | undefined => {
    const index = queue.findIndex((f) => f.family === undefined || f.family === family);
    const failure = queue[index];
    if (failure === undefined) return undefined;
    failure.remaining -= 1;
    if (failure.remaining <= 0) queue.splice(index, 1);
    return failure;
  };

  const find = (family: Family, name: string): SaveChain => {
    const chain = tables[family].find((c) => c.name === name);
    if (!chain) throw new Error(`iptables: No chain/target/match by that name: ${name}`);
    return chain;
  };

  return {
    flavour,
    restores,
    saves,
    save(family) {
      saves.push(family);
      if (take(saveFailures, family)) return Promise.reject(saveError(family, flavour));
      return Promise.resolve(renderSave(family, tables[family]));
    },
    restore(family, script) {
      restores.push({ family, script });
      const failure = take(restoreFailures, family);
      if (failure) {
        return Promise.reject(
          failure.error ??
            restoreError(family, flavour, script, "iptables-restore: line 2 failed\n"),
        );
      }
      try {
        // applyRestore works on a copy, so a refused line leaves the table as it was.
        tables[family] = applyRestore(tables[family], script);
      } catch (error) {
        const stderr = error instanceof Error ? error.message : String(error);
        return Promise.reject(restoreError(family, flavour, script, stderr));
      }
      return Promise.resolve();
    },
    chains: (family) => copy(tables[family]),
    rules(family, chain) {
      const found = tables[family].find((c) => c.name === chain);
      return found ? [...found.rules] : undefined;
    },
    iptables(family, command) {
      const match = /^-([FNXADI]) (\S+)(?: (.*))?$/.exec(command.trim());
      if (!match) throw new Error(`fake iptables: unsupported command: ${command}`);
      const [, op, name = "", rest = ""] = match;
      const table = tables[family];
      switch (op) {
        case "N":
          if (table.some((c) => c.name === name)) throw new Error(`iptables: Chain already exists`);
          table.push({ name, policy: "-", rules: [] });
          return;
        case "F":
          find(family, name).rules = [];
          return;
        case "X": {
          const chain = find(family, name);
          if (BUILT_IN.includes(name)) throw new Error(`iptables: cannot delete built-in ${name}`);
          if (chain.rules.length > 0) throw new Error(`iptables: Directory not empty`);
          if (table.some((c) => c.rules.some((spec) => spec.endsWith(`-j ${name}`))))
            throw new Error(`iptables: Too many links`);
          table.splice(table.indexOf(chain), 1);
          return;
        }
        case "A":
          find(family, name).rules.push(rest);
          return;
        case "I": {
          const chain = find(family, name);
          const numbered = /^(\d+) (.*)$/.exec(rest);
          const position = numbered ? Number(numbered[1]) : 1;
          const spec = numbered ? (numbered[2] ?? "") : rest;
          if (position < 1 || position > chain.rules.length + 1)
            throw new Error(`iptables: Index of insertion too big`);
          chain.rules.splice(position - 1, 0, spec);
          return;
        }
        default: {
          const chain = find(family, name);
          const words = tokenizeRule(rest).join("\u0000");
          const index = chain.rules.findIndex(
            (spec) => tokenizeRule(spec).join("\u0000") === words,
          );
          if (index < 0)
            throw new Error(`iptables: Bad rule (does a matching rule exist in that chain?)`);
          chain.rules.splice(index, 1);
        }
      }
    },
    failNextRestore(error, options = {}) {
      restoreFailures.push({ error, family: options.family, remaining: options.times ?? 1 });
    },
    failSaves(n, family) {
      saveFailures.push({ error: undefined, family, remaining: n });
    },
  };
}
