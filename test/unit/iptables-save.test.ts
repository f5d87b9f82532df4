// Reading the kernel back: `iptables-save -c` text into the filter table's chains. What an
// operator relies on here is that foreign rules are kept exactly as printed and where they
// stand, that only our comment tag marks a rule as ours, and that other tables never leak in.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import {
  ourRulesIn,
  parseIptablesSave,
  type ObservedTable,
  type SavedRule,
} from "../../src/core/iptables-save.js";

const fixture = (name: string): string =>
  readFileSync(new URL(`../fixtures/iptables-save/${name}`, import.meta.url), "utf8");

/** The verbatim iptables-nft-save 1.8.9 output of a host with our chains installed. */
const REFERENCE = fixture("reference-nft.save");
/** raw, mangle and nat around filter, counters everywhere, a foreign chain, the legacy warning. */
const MIXED = fixture("mixed-tables.save");

function rules(table: ObservedTable, chain: string): readonly SavedRule[] {
  const found = table.chains.get(chain);
  assert.ok(found, `chain ${chain} should be present`);
  return found;
}

/** The fields a test cares about, in a form deepEqual prints readably. */
function summary(rule: SavedRule): [number, string, string | undefined, number, number] {
  return [rule.position, rule.spec, rule.tag, rule.packets, rule.bytes];
}

void describe("the reference iptables-nft-save output", () => {
  const table = parseIptablesSave(REFERENCE);

  void test("every declared chain is listed, built-in first, in save order", () => {
    assert.deepEqual(
      [...table.chains.keys()],
      ["INPUT", "FORWARD", "OUTPUT", "IMDS-GUARD", "IMDS-GUARD-REFUSE"],
    );
    assert.deepEqual(rules(table, "INPUT"), []);
  });

  void test("OUTPUT keeps our jumps and the foreign ACCEPT, each with its position, text and counters", () => {
    assert.deepEqual(rules(table, "OUTPUT").map(summary), [
      [
        1,
        '-d 169.254.169.254/32 -m comment --comment "imds-guard:iiii" -j IMDS-GUARD',
        "imds-guard:iiii",
        0,
        0,
      ],
      [
        2,
        '! -d 169.254.169.254/32 -m conntrack --ctorigdst 169.254.169.254 -m comment --comment "imds-guard:jjjj" -j IMDS-GUARD',
        "imds-guard:jjjj",
        0,
        0,
      ],
      [3, "-m owner --uid-owner 1000 -j ACCEPT", undefined, 0, 0],
    ]);
  });

  void test("positions restart in every chain and counters belong to their own rule", () => {
    assert.deepEqual(rules(table, "IMDS-GUARD-REFUSE").map(summary), [
      [
        1,
        '-m limit --limit 6/min --limit-burst 10 -m comment --comment "imds-guard:ffff" -j LOG --log-prefix "imds-guard refused: " --log-uid',
        "imds-guard:ffff",
        12,
        720,
      ],
      [
        2,
        '-p tcp -m comment --comment "imds-guard:gggg" -j REJECT --reject-with tcp-reset',
        "imds-guard:gggg",
        0,
        0,
      ],
    ]);
  });

  void test("tokens unquote the comment and keep a quoted prefix with spaces as one token", () => {
    const log = rules(table, "IMDS-GUARD-REFUSE")[0];
    assert.deepEqual(log?.tokens, [
      "-m",
      "limit",
      "--limit",
      "6/min",
      "--limit-burst",
      "10",
      "-m",
      "comment",
      "--comment",
      "imds-guard:ffff",
      "-j",
      "LOG",
      "--log-prefix",
      "imds-guard refused: ",
      "--log-uid",
    ]);
  });

  void test("ourRulesIn returns only tagged rules, the same objects the chain holds", () => {
    const output = rules(table, "OUTPUT");
    assert.deepEqual(ourRulesIn(table, "OUTPUT"), output.slice(0, 2));
    assert.equal(ourRulesIn(table, "OUTPUT")[0], output[0]);
    assert.deepEqual(ourRulesIn(table, "NO-SUCH-CHAIN"), []);
  });
});

void describe("a save with other tables, foreign rules and tool warnings", () => {
  const filter = parseIptablesSave(MIXED);

  void test("only the filter table is read: nat's IMDS-GUARD chain and DNAT, raw's NOTRACK, mangle's MARK never leak in", () => {
    assert.deepEqual(
      [...filter.chains.keys()],
      ["INPUT", "FORWARD", "OUTPUT", "DOCKER-USER", "IMDS-GUARD", "IMDS-GUARD-REFUSE"],
    );
    assert.deepEqual(
      rules(filter, "IMDS-GUARD").map((rule) => rule.tag),
      ["imds-guard:aaaa"],
    );
    const all = [...filter.chains.values()]
      .flat()
      .map((rule) => rule.spec)
      .join("\n");
    for (const foreignTableText of [
      "DNAT",
      "--notrack",
      "MARK",
      "imds-guard:nat00000",
      "imds-guard:mangle00",
    ]) {
      assert.ok(!all.includes(foreignTableText), foreignTableText);
    }
  });

  const cases: readonly {
    intent: string;
    position: number;
    tag: string | undefined;
    packets: number;
  }[] = [
    {
      intent: "a foreign rule above ours keeps position 1, untagged though it has a comment",
      position: 1,
      tag: undefined,
      packets: 17,
    },
    {
      intent: "an unquoted comment (iptables-save omits quotes when it can) still carries our tag",
      position: 2,
      tag: "imds-guard:unquoted0",
      packets: 5,
    },
    { intent: "an unquoted foreign comment is not ours", position: 3, tag: undefined, packets: 0 },
    {
      intent: "a comment that merely mentions our prefix, with escaped quotes, is not ours",
      position: 4,
      tag: undefined,
      packets: 2,
    },
  ];
  for (const { intent, position, tag, packets } of cases) {
    void test(intent, () => {
      const rule = rules(filter, "OUTPUT")[position - 1];
      assert.equal(rule?.position, position);
      assert.equal(rule.tag, tag);
      assert.equal(rule.packets, packets);
      assert.equal(rule.bytes, packets * 60);
    });
  }

  void test("a foreign rule's text is kept byte for byte, escapes included, for use in -D", () => {
    const quoted = rules(filter, "OUTPUT")[3];
    assert.equal(
      quoted?.spec,
      String.raw`-m comment --comment "say \"hi\" to imds-guard:" -j ACCEPT`,
    );
    assert.deepEqual(quoted.tokens, [
      "-m",
      "comment",
      "--comment",
      'say "hi" to imds-guard:',
      "-j",
      "ACCEPT",
    ]);
  });

  void test("another table can be asked for by name", () => {
    const nat = parseIptablesSave(MIXED, "nat");
    assert.deepEqual(
      [...nat.chains.keys()],
      ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "IMDS-GUARD"],
    );
    assert.equal(rules(nat, "OUTPUT")[0]?.tag, "imds-guard:nat00000");
  });
});

void describe("robustness against unusual input", () => {
  const cases: readonly {
    intent: string;
    text: string;
    chains: Record<string, [string, string | undefined][]>;
  }[] = [
    { intent: "empty input: no chains at all", text: "", chains: {} },
    {
      intent: "only comments and blank lines",
      text: "# Generated by iptables-save\n\n# Completed\n",
      chains: {},
    },
    {
      intent: "no filter table (module not loaded): nothing, even if nat has rules",
      text: "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j RETURN\nCOMMIT\n",
      chains: {},
    },
    {
      intent: "a filter table with only built-in chains (fresh kernel)",
      text: "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
      chains: { INPUT: [], FORWARD: [], OUTPUT: [] },
    },
    {
      intent: "iptables-save without -c: no counter prefix, counters read as 0",
      text: '*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -m comment --comment "imds-guard:x" -j IMDS-GUARD\nCOMMIT\n',
      chains: { OUTPUT: [['-m comment --comment "imds-guard:x" -j IMDS-GUARD', "imds-guard:x"]] },
    },
    {
      intent: "a rule in a chain never declared still lands in that chain, at position 1",
      text: "*filter\n:OUTPUT ACCEPT [0:0]\n[1:2] -A IMDS-GUARD -m comment --comment imds-guard:y\nCOMMIT\n",
      chains: { OUTPUT: [], "IMDS-GUARD": [["-m comment --comment imds-guard:y", "imds-guard:y"]] },
    },
    {
      intent: "CRLF line ends, trailing blanks and a missing final COMMIT",
      text: "*filter\r\n:OUTPUT ACCEPT [0:0]  \r\n[3:4] -A OUTPUT -j ACCEPT   \r\n",
      chains: { OUTPUT: [["-j ACCEPT", undefined]] },
    },
    {
      intent: "a rule with no matches and no target (bare -A) is kept with empty text",
      text: "*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT\nCOMMIT\n",
      chains: { OUTPUT: [["", undefined]] },
    },
    {
      intent: "lines that are not rules inside the table are skipped",
      text: "*filter\n:OUTPUT ACCEPT [0:0]\n-I OUTPUT 1 -j DROP\ngarbage\n-A OUTPUT -j ACCEPT\nCOMMIT\n",
      chains: { OUTPUT: [["-j ACCEPT", undefined]] },
    },
    {
      intent: "a --comment as the last token (no value) is not a tag",
      text: "*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -m comment --comment\nCOMMIT\n",
      chains: { OUTPUT: [["-m comment --comment", undefined]] },
    },
    {
      intent: "rules after COMMIT and before the next table header belong to no table",
      text: "*filter\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n-A OUTPUT -j DROP\n",
      chains: { OUTPUT: [] },
    },
  ];
  for (const { intent, text, chains } of cases) {
    void test(intent, () => {
      const table = parseIptablesSave(text);
      const actual = Object.fromEntries(
        [...table.chains].map(([name, list]) => [name, list.map((rule) => [rule.spec, rule.tag])]),
      );
      assert.deepEqual(actual, chains);
      for (const list of table.chains.values()) {
        list.forEach((rule, i) => {
          assert.equal(rule.position, i + 1);
        });
      }
    });
  }
});

void describe("comments escaped the way iptables-save escapes them", () => {
  // xtables_save_string() backslash-escapes `"`, `\` and `'` inside the quotes, and
  // iptables-restore's add_param_to_argv() unescapes any character after a backslash.
  // tokenizeRule only knows `\"`.
  const cases: readonly { intent: string; spec: string; tokens: string[] }[] = [
    {
      intent: "an escaped single quote reads as the quote alone",
      spec: String.raw`-m comment --comment "it\'s ops" -j ACCEPT`,
      tokens: ["-m", "comment", "--comment", "it's ops", "-j", "ACCEPT"],
    },
    {
      intent: "a comment ending in an escaped backslash does not swallow the rest of the rule",
      spec: String.raw`-m comment --comment "C:\\" -j ACCEPT`,
      tokens: ["-m", "comment", "--comment", "C:\\", "-j", "ACCEPT"],
    },
  ];
  for (const { intent, spec, tokens } of cases) {
    void test(intent, () => {
      const table = parseIptablesSave(`*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT ${spec}\nCOMMIT\n`);
      assert.deepEqual(rules(table, "OUTPUT")[0]?.tokens, tokens);
    });
  }
});
