// What imds-guard writes into a fresh kernel for a given policy, pinned by golden restore
// scripts, and the tagging scheme that lets it recognise its own rules later. Regenerate the
// golden files with UPDATE_GOLDEN=1 and review every changed line before committing them.

import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { describe, test } from "node:test";

import type { Config, Family } from "../../src/core/config-model.js";
import { diffFamily } from "../../src/core/diff.js";
import { parseIptablesSave } from "../../src/core/iptables-save.js";
import type { Principals } from "../../src/core/principals.js";
import { renderRestoreScript } from "../../src/core/restore-script.js";
import { tokenizeRule } from "../../src/core/rule-text.js";
import {
  absentFamily,
  CHAIN,
  countRules,
  renderDesired,
  REFUSE_CHAIN,
  type DesiredFamily,
} from "../../src/core/ruleset.js";
import { IMDS_V4, IMDS_V6, makeConfig, makePrincipals } from "./helpers/config.js";
import { toSaveText } from "./helpers/save-text.js";

const GOLDEN_DIR = new URL("../fixtures/golden/", import.meta.url);
const UPDATE = process.env.UPDATE_GOLDEN === "1";

/** The restore script that takes a kernel with nothing of ours to `desired`. */
function freshInstallScript(desired: DesiredFamily): string {
  const fresh = parseIptablesSave(toSaveText(absentFamily(desired.family)));
  return renderRestoreScript(diffFamily(desired, fresh), desired);
}

async function assertGolden(name: string, actual: string): Promise<void> {
  const url = new URL(name, GOLDEN_DIR);
  if (UPDATE) await writeFile(url, actual);
  assert.equal(
    actual,
    await readFile(url, "utf8"),
    `golden file ${name} differs; see UPDATE_GOLDEN=1`,
  );
}

interface Scenario {
  readonly name: string;
  readonly intent: string;
  readonly config: Config;
  readonly principals: Principals;
  /** Families whose script is pinned by a golden file; the others must render nothing. */
  readonly installed: readonly Family[];
}

const both: readonly Family[] = ["ipv4", "ipv6"];

const scenarios: readonly Scenario[] = [
  {
    name: "allow-enforce",
    intent:
      "allow-list of users and groups: RETURN per uid and per gid, the rest refused and logged",
    config: makeConfig({ principals: { users: ["alice", "2001"], groups: ["imds", "wheel"] } }),
    principals: makePrincipals("allow", [1000, 2001, 998], [2000, 10]),
    installed: both,
  },
  {
    name: "deny-apache",
    intent:
      "deny-list `users: [apache]`: only uid 48 is sent to the refusal chain, the rest falls through",
    config: makeConfig({ policy: "deny", principals: { users: ["apache"], groups: [] } }),
    principals: makePrincipals("deny", [48]),
    installed: both,
  },
  {
    name: "deny-tcp",
    intent: "deny-list limited to TCP: each deny rule carries -p tcp, and no ICMP rejection exists",
    config: makeConfig({
      policy: "deny",
      protocols: "tcp",
      principals: { users: ["apache"], groups: ["www"] },
    }),
    principals: makePrincipals("deny", [48], [33]),
    installed: ["ipv4"],
  },
  {
    name: "allow-audit",
    intent:
      "audit mode: counts and logs with the audit prefix even with log_denied false, never rejects",
    config: makeConfig({
      mode: "audit",
      logDenied: false,
      principals: { users: ["alice"], groups: [] },
    }),
    principals: makePrincipals("allow", [1000]),
    installed: both,
  },
  {
    name: "allow-tcp",
    intent:
      "protocols tcp: only TCP is sent to refusal and rejected with tcp-reset; no ICMP rejection",
    config: makeConfig({ protocols: "tcp", principals: { users: ["alice"], groups: [] } }),
    principals: makePrincipals("allow", [1000]),
    installed: both,
  },
  {
    name: "allow-nolog",
    intent: "log_denied false in enforce mode: no LOG rule, rejects follow the counter directly",
    config: makeConfig({ logDenied: false, principals: { users: ["alice"], groups: [] } }),
    principals: makePrincipals("allow", [1000]),
    installed: ["ipv4"],
  },
  {
    name: "allow-ipv4-only",
    intent:
      "ipv4-only targets, two of them: four jumps in v4, and the ipv6 family is not installed at all",
    config: makeConfig({ targets: { ipv4: [IMDS_V4, "169.254.170.2/32"], ipv6: [] } }),
    principals: makePrincipals("allow", [0]),
    installed: ["ipv4"],
  },
  {
    name: "allow-nobody",
    intent:
      "allow-list with nobody resolved: every attempt is refused (an unknown name never widens access)",
    config: makeConfig({ principals: { users: ["ghost"], groups: [] } }),
    principals: makePrincipals("allow"),
    installed: ["ipv4"],
  },
];

function scriptLines(script: string): string[] {
  return script.split("\n").filter((line) => line !== "");
}

void describe("a fresh kernel gets exactly the golden restore script", () => {
  for (const scenario of scenarios) {
    const desired = renderDesired(scenario.config, scenario.principals);
    for (const family of scenario.installed) {
      void test(`${scenario.name} ${family}: ${scenario.intent}`, async () => {
        await assertGolden(
          `${scenario.name}.${family}.restore`,
          freshInstallScript(desired[family]),
        );
      });
    }
  }
});

void describe("every fresh-install script has the shape the kernel needs", () => {
  for (const scenario of scenarios) {
    const desired = renderDesired(scenario.config, scenario.principals);
    for (const family of scenario.installed) {
      void test(`${scenario.name} ${family}`, () => {
        const { config, principals } = scenario;
        const lines = scriptLines(freshInstallScript(desired[family]));
        const ruleLines = lines.filter((line) => line.startsWith("-"));

        // One transaction, our two chains declared (flushed) first, nothing of anyone else's.
        assert.equal(lines[0], "*filter");
        assert.deepEqual(lines.slice(1, 3), [`:${CHAIN} - [0:0]`, `:${REFUSE_CHAIN} - [0:0]`]);
        assert.equal(lines.at(-1), "COMMIT");
        assert.equal(ruleLines.length, countRules(desired[family]));
        for (const line of ruleLines)
          assert.match(line, /-m comment --comment "imds-guard:[0-9a-f]{16}"/, line);
        assert.ok(lines.every((line) => !line.startsWith("-D ") && !line.startsWith("-X ")));

        // Two jumps per target, inserted at OUTPUT 1..n, in target order.
        const targets = config.targets[family];
        const inserts = ruleLines.filter((line) => line.startsWith("-I OUTPUT "));
        assert.equal(inserts.length, 2 * targets.length);
        inserts.forEach((line, i) => {
          const target = targets[Math.floor(i / 2)] ?? "";
          const host = target.replace(/\/(32|128)$/, "");
          assert.ok(line.startsWith(`-I OUTPUT ${i + 1} `), line);
          const expected =
            i % 2 === 0 ? ` -d ${target} ` : ` ! -d ${target} -m conntrack --ctorigdst ${host} `;
          assert.ok(line.includes(expected), `${line} lacks${expected}`);
          assert.ok(line.endsWith(`-j ${CHAIN}`), line);
        });

        // The entry chain: one owner rule per id, uids before gids, gids with --suppl-groups.
        const entry = ruleLines.filter((line) => line.startsWith(`-A ${CHAIN} `));
        const owners = entry.filter((line) => line.includes("-m owner"));
        const expectedOwners = [
          ...principals.uids.map((id) => `-m owner --uid-owner ${id} -m comment`),
          ...principals.gids.map((id) => `-m owner --gid-owner ${id} --suppl-groups -m comment`),
        ];
        assert.equal(owners.length, expectedOwners.length);
        owners.forEach((line, i) => {
          assert.ok(
            line.includes(expectedOwners[i] ?? "?"),
            `${line} should match ${String(expectedOwners[i])}`,
          );
          const verdict = config.policy === "allow" ? "-j RETURN" : `-j ${REFUSE_CHAIN}`;
          assert.ok(line.endsWith(verdict), line);
          assert.equal(
            line.includes("-p tcp"),
            config.policy === "deny" && config.protocols === "tcp",
            line,
          );
        });
        const refuseRest = entry.filter(
          (line) => !line.includes("-m owner") && line.endsWith(`-j ${REFUSE_CHAIN}`),
        );
        assert.equal(refuseRest.length, config.policy === "allow" ? 1 : 0);
        assert.equal(
          entry.at(-1),
          config.policy === "allow" ? refuseRest[0] : (owners.at(-1) ?? entry[0]),
        );

        // The refusal chain: counter, then LOG (with the uid) before any REJECT.
        const refuse = ruleLines.filter((line) => line.startsWith(`-A ${REFUSE_CHAIN} `));
        const logs = refuse.findIndex((line) => line.includes("-j LOG"));
        const wantsLog = config.logDenied || config.mode === "audit";
        assert.equal(logs >= 0, wantsLog);
        if (wantsLog) {
          assert.equal(logs, 1);
          assert.ok(
            refuse[logs]?.endsWith(
              `-j LOG --log-prefix "imds-guard ${config.mode === "audit" ? "audit" : "refused"}: " --log-uid`,
            ),
          );
        }
        const rejects = refuse
          .filter((line) => line.includes("-j REJECT"))
          .map((line) => line.replace(/.*-j REJECT /, ""));
        const icmp = family === "ipv4" ? "icmp-port-unreachable" : "icmp6-port-unreachable";
        const expectedRejects =
          config.mode === "audit"
            ? []
            : config.protocols === "tcp"
              ? ["--reject-with tcp-reset"]
              : ["--reject-with tcp-reset", `--reject-with ${icmp}`];
        assert.deepEqual(rejects, expectedRejects);
        const tcpReset = refuse.find((line) => line.endsWith("tcp-reset"));
        if (tcpReset !== undefined)
          assert.ok(tcpReset.includes(" -p tcp "), "tcp-reset is only valid for TCP");
      });
    }
    for (const family of both.filter((f) => !scenario.installed.includes(f))) {
      if (scenario.config.targets[family].length > 0) continue;
      void test(`${scenario.name} ${family}: a family without targets is not installed and needs no script`, () => {
        assert.equal(desired[family].installed, false);
        assert.equal(countRules(desired[family]), 0);
        assert.equal(freshInstallScript(desired[family]), "");
      });
    }
  }
});

/** Every tag of a family, keyed by chain and position. */
function tagsOf(desired: DesiredFamily): Map<string, string> {
  const tags = new Map<string, string>();
  desired.jumps.forEach((rule, i) => tags.set(`OUTPUT#${i}`, rule.tag));
  for (const chain of desired.chains)
    chain.rules.forEach((rule, i) => tags.set(`${chain.name}#${i}`, rule.tag));
  return tags;
}

function changedKeys(a: Map<string, string>, b: Map<string, string>): string[] {
  const keys = new Set([...a.keys(), ...b.keys()]);
  return [...keys].filter((key) => a.get(key) !== b.get(key)).sort();
}

void describe("tags identify a rule's content and place", () => {
  const config = makeConfig();
  const base = renderDesired(config, makePrincipals("allow", [1000, 1001], [2000])).ipv4;

  void test("rendering the same input twice gives the same tags and text", () => {
    const again = renderDesired(makeConfig(), makePrincipals("allow", [1001, 1000], [2000])).ipv4;
    assert.deepEqual(again, base);
  });

  void test("a tag is the rule's own comment, and unique within the family", () => {
    const all = [...base.jumps, ...base.chains.flatMap((chain) => chain.rules)];
    for (const rule of all) {
      assert.ok(rule.spec.includes(`--comment "${rule.tag}"`));
      assert.deepEqual(tokenizeRule(rule.spec), rule.tokens);
    }
    assert.equal(new Set(all.map((rule) => rule.tag)).size, all.length);
  });

  const cases: readonly {
    intent: string;
    principals: Principals;
    config?: Config;
    changed: string[];
  }[] = [
    {
      intent:
        "changing one uid changes that rule's tag and every tag after it in the chain, nothing else",
      principals: makePrincipals("allow", [1000, 1002], [2000]),
      changed: [`${CHAIN}#2`, `${CHAIN}#3`, `${CHAIN}#4`],
    },
    {
      intent: "inserting a uid ahead shifts the same rules down a place, so their tags change too",
      principals: makePrincipals("allow", [999, 1000, 1001], [2000]),
      changed: [`${CHAIN}#1`, `${CHAIN}#2`, `${CHAIN}#3`, `${CHAIN}#4`, `${CHAIN}#5`],
    },
    {
      intent:
        "turning logging off changes the refusal chain from the removed rule on; the entry chain keeps its tags",
      principals: makePrincipals("allow", [1000, 1001], [2000]),
      config: makeConfig({ logDenied: false }),
      changed: [`${REFUSE_CHAIN}#1`, `${REFUSE_CHAIN}#2`, `${REFUSE_CHAIN}#3`],
    },
    {
      intent: "a different target changes the jumps only",
      principals: makePrincipals("allow", [1000, 1001], [2000]),
      config: makeConfig({ targets: { ipv4: ["169.254.170.2/32"], ipv6: [IMDS_V6] } }),
      changed: ["OUTPUT#0", "OUTPUT#1"],
    },
  ];
  for (const { intent, principals, config: changedConfig, changed } of cases) {
    void test(intent, () => {
      const other = renderDesired(changedConfig ?? config, principals).ipv4;
      assert.deepEqual(changedKeys(tagsOf(base), tagsOf(other)), changed);
    });
  }

  void test("the same rule in the other family carries the same tag only where its text is the same", () => {
    const desired = renderDesired(config, makePrincipals("allow", [1000, 1001], [2000]));
    assert.deepEqual(changedKeys(tagsOf(desired.ipv4), tagsOf(desired.ipv6)), [
      "IMDS-GUARD-REFUSE#3",
      "OUTPUT#0",
      "OUTPUT#1",
    ]);
  });
});
