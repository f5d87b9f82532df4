// Parses `iptables-save -c` output (either flavour) into the filter table's chains and rules.
// Everything that is not ours is kept as it was read, so the diff can tell where our jumps
// stand among foreign rules; nothing here ever rewrites a foreign rule.

import { tagOf, tokenizeRule } from "./rule-text.js";

export interface SavedRule {
  readonly chain: string;
  /** The rule text after "-A CHAIN ", exactly as printed (usable verbatim in `-D CHAIN`). */
  readonly spec: string;
  readonly tokens: readonly string[];
  /** Our comment tag, when the rule carries one. */
  readonly tag?: string;
  /** 1-based position within its chain. */
  readonly position: number;
  readonly packets: number;
  readonly bytes: number;
}

export interface ObservedTable {
  /** Every chain declared in the table, built-in ones included, in save order. */
  readonly chains: ReadonlyMap<string, readonly SavedRule[]>;
}

const COUNTERS = /^\[(\d+):(\d+)\]\s+/;

/** Parses one table (default: filter) out of a full save; a missing table is empty. */
export function parseIptablesSave(text: string, table = "filter"): ObservedTable {
  const chains = new Map<string, SavedRule[]>();
  let inTable = false;
  for (const rawLine of text.split("\n")) {
    const line = rawLine.trim();
    if (line === "" || line.startsWith("#")) continue;
    if (line.startsWith("*")) {
      inTable = line.slice(1) === table;
      continue;
    }
    if (!inTable) continue;
    if (line === "COMMIT") {
      inTable = false;
      continue;
    }
    if (line.startsWith(":")) {
      const name = line.slice(1).split(/\s+/)[0] ?? "";
      if (!chains.has(name)) chains.set(name, []);
      continue;
    }
    let packets = 0;
    let bytes = 0;
    let rest = line;
    const counters = COUNTERS.exec(rest);
    if (counters) {
      packets = Number(counters[1]);
      bytes = Number(counters[2]);
      rest = rest.slice(counters[0].length);
    }
    const append = /^-A\s+(\S+)\s*(.*)$/.exec(rest);
    if (!append) continue;
    const chain = append[1] ?? "";
    const spec = append[2] ?? "";
    const rules = chains.get(chain) ?? [];
    if (!chains.has(chain)) chains.set(chain, rules);
    const tokens = tokenizeRule(spec);
    const tag = tagOf(tokens);
    rules.push({
      chain,
      spec,
      tokens,
      ...(tag === undefined ? {} : { tag }),
      position: rules.length + 1,
      packets,
      bytes,
    });
  }
  return { chains };
}

/** The uids and gids our entry chain currently sends to the refusal chain (deny-list rules). */
export function deniedIdsIn(
  table: ObservedTable,
  chain: string,
  refuseChain: string,
): { uids: number[]; gids: number[] } {
  const uids: number[] = [];
  const gids: number[] = [];
  for (const rule of table.chains.get(chain) ?? []) {
    const t = rule.tokens;
    if (rule.tag === undefined || t[t.indexOf("-j") + 1] !== refuseChain) continue;
    const uid = t.indexOf("--uid-owner");
    const gid = t.indexOf("--gid-owner");
    if (uid >= 0 && /^\d+$/.test(t[uid + 1] ?? "")) uids.push(Number(t[uid + 1]));
    if (gid >= 0 && /^\d+$/.test(t[gid + 1] ?? "")) gids.push(Number(t[gid + 1]));
  }
  return { uids, gids };
}

export function ourRulesIn(table: ObservedTable, chain: string): SavedRule[] {
  return (table.chains.get(chain) ?? []).filter((rule) => rule.tag !== undefined);
}
