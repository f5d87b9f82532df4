// Properties over arbitrary policies: what imds-guard writes reads back as "in sync", what it
// plans from any drift puts the kernel back in sync without touching foreign rules, names from
// NSS never reach a rule, and rule text survives tokenising.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import fc from "fast-check";

import type { Config, Family } from "../../src/core/config-model.js";
import { diffFamily, planIsEmpty } from "../../src/core/diff.js";
import { parseIptablesSave, type ObservedTable } from "../../src/core/iptables-save.js";
import type { NssSnapshot } from "../../src/core/nss.js";
import { resolvePrincipals, type Principals } from "../../src/core/principals.js";
import { renderRestoreScript } from "../../src/core/restore-script.js";
import { tagOf, tokenizeRule } from "../../src/core/rule-text.js";
import {
  CHAIN,
  countRules,
  REFUSE_CHAIN,
  renderDesired,
  type DesiredFamily,
} from "../../src/core/ruleset.js";
import { makeConfig, makePrincipals } from "./helpers/config.js";
import {
  applyRestore,
  chainsOf,
  filterChains,
  renderSave,
  toSaveText,
  type Foreign,
} from "./helpers/save-text.js";

const FAMILIES: readonly Family[] = ["ipv4", "ipv6"];
const RUNS = { numRuns: 200 };

// ---- generators -------------------------------------------------------------------------

/** An IPv4 CIDR as config.ts normalises it: host bits cleared, prefix always present. */
const ipv4Cidr = fc
  .tuple(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 8, max: 32 }))
  .map(([n, prefix]) => {
    const masked = prefix === 32 ? n : n & ~(0xffffffff >>> prefix);
    const octets = [24, 16, 8, 0].map((shift) => (masked >>> shift) & 0xff);
    return `${octets.join(".")}/${prefix}`;
  });

/** An IPv6 CIDR in the canonical form iptables-save prints (RFC 5952, as inet_ntop does). */
const ipv6Cidr = fc
  .tuple(
    fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 7, maxLength: 7 }),
    fc.integer({ min: 48, max: 128 }),
  )
  .map(([rest, prefix]) => {
    const groups = [0xfd00, ...rest].map((group, i) => {
      const keep = Math.max(0, Math.min(16, prefix - i * 16));
      return keep === 16 ? group : group & ~(0xffff >>> keep) & 0xffff;
    });
    const canonical = new URL(
      `http://[${groups.map((g) => g.toString(16)).join(":")}]/`,
    ).hostname.slice(1, -1);
    return `${canonical}/${prefix}`;
  });

const ids = fc.uniqueArray(fc.integer({ min: 0, max: 0xfffffffe }), { maxLength: 20 });

interface Policy {
  readonly config: Config;
  readonly principals: Principals;
}

function policyArb(minTargets: number): fc.Arbitrary<Policy> {
  return fc
    .record({
      policy: fc.constantFrom("allow" as const, "deny" as const),
      mode: fc.constantFrom("enforce" as const, "audit" as const),
      protocols: fc.constantFrom("all" as const, "tcp" as const),
      logDenied: fc.boolean(),
      uids: ids,
      gids: ids,
      ipv4: fc.uniqueArray(ipv4Cidr, { minLength: minTargets, maxLength: 3 }),
      ipv6: fc.uniqueArray(ipv6Cidr, { minLength: minTargets, maxLength: 3 }),
    })
    .map(({ policy, mode, protocols, logDenied, uids, gids, ipv4, ipv6 }) => ({
      config: makeConfig({
        policy,
        mode,
        protocols,
        logDenied,
        principals: { users: uids.map(String), groups: gids.map(String) },
        targets: { ipv4, ipv6 },
      }),
      principals: makePrincipals(policy, uids, gids),
    }));
}

/** Foreign rules that can stand below our jumps without changing what we find. */
const FOREIGN_OUTPUT = [
  "-m owner --uid-owner 0 -j ACCEPT",
  "-d 169.254.169.254/32 -j ACCEPT",
  '-m comment --comment "ops: keep" -j ACCEPT',
  "-m comment --comment imds-guard -j LOG",
  "-j DOCKER-USER",
];
const foreignArb: fc.Arbitrary<Foreign> = fc.record({
  after: fc.array(fc.constantFrom(...FOREIGN_OUTPUT), { maxLength: 4 }),
  otherChains: fc.constantFrom<Record<string, readonly string[]>>(
    { "DOCKER-USER": ["-j RETURN"] },
    { "DOCKER-USER": [], LOGDROP: ["-j LOG", "-j DROP"] },
  ),
  otherTables: fc.boolean(),
  legacyWarning: fc.boolean(),
});

/** The number of rules a family must hold, counted from the policy alone. */
function expectedRuleCount(config: Config, principals: Principals, family: Family): number {
  const targets = config.targets[family].length;
  if (targets === 0) return 0;
  const entry =
    1 + principals.uids.length + principals.gids.length + (config.policy === "allow" ? 1 : 0);
  const logs = config.logDenied || config.mode === "audit" ? 1 : 0;
  const rejects = config.mode === "enforce" ? (config.protocols === "tcp" ? 1 : 2) : 0;
  return entry + 1 + logs + rejects + 2 * targets;
}

// ---- (a) what we write reads back as in sync --------------------------------------------

void describe("what imds-guard writes, read back from iptables-save, is in sync", () => {
  void test("render -> save text -> parse -> diff finds nothing, for any policy and foreign rules below ours", () => {
    fc.assert(
      fc.property(policyArb(1), foreignArb, ({ config, principals }, foreign) => {
        const desired = renderDesired(config, principals);
        for (const family of FAMILIES) {
          const plan = diffFamily(
            desired[family],
            parseIptablesSave(toSaveText(desired[family], foreign)),
          );
          assert.deepEqual(plan.findings, []);
          assert.ok(planIsEmpty(plan));
          assert.equal(renderRestoreScript(plan, desired[family]), "");
        }
      }),
      RUNS,
    );
  });

  void test("the rule count follows from the policy: ids, mode, protocols, logging and targets", () => {
    fc.assert(
      fc.property(policyArb(0), ({ config, principals }) => {
        const desired = renderDesired(config, principals);
        for (const family of FAMILIES) {
          assert.equal(countRules(desired[family]), expectedRuleCount(config, principals, family));
          assert.equal(desired[family].installed, config.targets[family].length > 0);
        }
      }),
      RUNS,
    );
  });
});

// ---- drift from any kernel state is repaired in one transaction ---------------------------

/** A change someone or something made to the kernel after we wrote it. */
type Mutation =
  | { kind: "delete"; chain: string; at: number }
  | { kind: "insert-foreign"; chain: string; at: number; rule: string }
  | { kind: "duplicate-jump"; from: number; at: number }
  | { kind: "swap-output"; a: number; b: number }
  | { kind: "flush"; chain: string }
  | { kind: "reboot" };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({
    kind: fc.constant("delete" as const),
    chain: fc.constantFrom("OUTPUT", CHAIN, REFUSE_CHAIN),
    at: fc.nat(),
  }),
  fc.record({
    kind: fc.constant("insert-foreign" as const),
    chain: fc.constantFrom("OUTPUT", "OUTPUT", CHAIN, REFUSE_CHAIN),
    at: fc.nat(),
    rule: fc.constantFrom(...FOREIGN_OUTPUT),
  }),
  fc.record({ kind: fc.constant("duplicate-jump" as const), from: fc.nat(), at: fc.nat() }),
  fc.record({ kind: fc.constant("swap-output" as const), a: fc.nat(), b: fc.nat() }),
  fc.record({ kind: fc.constant("flush" as const), chain: fc.constantFrom(CHAIN, REFUSE_CHAIN) }),
  fc.record({ kind: fc.constant("reboot" as const) }),
);

function mutate(desired: DesiredFamily, foreign: Foreign, mutations: readonly Mutation[]): string {
  let chains = filterChains(desired, foreign);
  const find = (name: string): string[] | undefined =>
    chains.find((chain) => chain.name === name)?.rules;
  for (const m of mutations) {
    switch (m.kind) {
      case "delete": {
        const rules = find(m.chain);
        if (rules && rules.length > 0) rules.splice(m.at % rules.length, 1);
        break;
      }
      case "insert-foreign": {
        const rules = find(m.chain);
        rules?.splice(m.at % (rules.length + 1), 0, m.rule);
        break;
      }
      case "duplicate-jump": {
        const rules = find("OUTPUT");
        const ours = rules?.filter((spec) => tagOf(tokenizeRule(spec)) !== undefined) ?? [];
        const copy = ours[m.from % Math.max(1, ours.length)];
        if (rules && copy !== undefined) rules.splice(m.at % (rules.length + 1), 0, copy);
        break;
      }
      case "swap-output": {
        const rules = find("OUTPUT");
        if (rules && rules.length > 1) {
          const a = m.a % rules.length;
          const b = m.b % rules.length;
          [rules[a], rules[b]] = [rules[b] ?? "", rules[a] ?? ""];
        }
        break;
      }
      case "flush": {
        const rules = find(m.chain);
        rules?.splice(0, rules.length);
        break;
      }
      case "reboot":
        chains = filterChains(
          { family: desired.family, installed: false, chains: [], jumps: [] },
          foreign,
        );
        break;
    }
  }
  return renderSave(desired.family, chains, foreign);
}

function foreignRules(table: ObservedTable): string[] {
  return [...table.chains]
    .filter(([name]) => name !== CHAIN && name !== REFUSE_CHAIN)
    .flatMap(([name, rules]) =>
      rules.filter((rule) => rule.tag === undefined).map((rule) => `${name} ${rule.spec}`),
    );
}

void describe("from any drift, one restore brings the kernel back in sync", () => {
  void test("kernel of policy A, mutated, planned towards policy B: the script applies, B is in sync, foreign rules kept", () => {
    fc.assert(
      fc.property(
        policyArb(0),
        policyArb(0),
        foreignArb,
        fc.array(mutationArb, { maxLength: 4 }),
        (a, b, foreign, mutations) => {
          const was = renderDesired(a.config, a.principals);
          const want = renderDesired(b.config, b.principals);
          for (const family of FAMILIES) {
            const before = parseIptablesSave(mutate(was[family], foreign, mutations));
            const plan = diffFamily(want[family], before);
            const script = renderRestoreScript(plan, want[family]);
            assert.equal(script === "", plan.findings.length === 0);
            // Ours are deleted by their saved text; a foreign rule's text never appears.
            for (const rule of plan.deleteJumps) assert.ok(rule.tag !== undefined);
            for (const line of script.split("\n").filter((l) => l.startsWith("-")))
              assert.match(line, /imds-guard:|^-X /);

            const after = parseIptablesSave(
              renderSave(family, applyRestore(chainsOf(before), script)),
            );
            assert.deepEqual(diffFamily(want[family], after).findings, []);
            const survivors = foreignRules(before).filter((rule) => !rule.startsWith(`${CHAIN} `));
            assert.deepEqual(foreignRules(after), survivors);
          }
        },
      ),
      RUNS,
    );
  });
});

// ---- (b) names never reach the rules ------------------------------------------------------

/** Names an attacker with control over an LDAP/SSSD entry might choose. */
const adversarialName = fc
  .tuple(
    fc.constantFrom(
      '"',
      "'",
      " ",
      "\n",
      "\t",
      " -j ACCEPT",
      '" -j ACCEPT "',
      "\\",
      "--comment",
      "$(reboot)",
      "\nCOMMIT\n*filter\n",
    ),
    fc.string({ maxLength: 12 }),
  )
  // A marker the renderer never writes, so "the name is not in the script" cannot pass by luck.
  .map(([danger, filler]) => `\u00a7${filler}${danger}${filler}`);

function namedPrincipals(
  policy: Config["policy"],
  uids: readonly number[],
  gids: readonly number[],
  names: readonly string[],
): Principals {
  const name = (i: number): string => names[i % Math.max(1, names.length)] ?? "\u00a7";
  const plain = makePrincipals(policy, uids, gids);
  return {
    ...plain,
    entries: [
      ...plain.uids.map((uid, i) => ({
        kind: "user" as const,
        spec: name(i),
        state: "resolved" as const,
        name: name(i),
        uid,
      })),
      ...plain.gids.map((gid, i) => ({
        kind: "group" as const,
        spec: name(i + 1),
        state: "resolved" as const,
        name: name(i + 1),
        gid,
        members: plain.uids.map((uid, j) => ({ name: name(j + 2), uid })),
      })),
    ],
    unresolved: [{ kind: "user" as const, spec: name(3), state: "unresolved" as const }],
  };
}

void describe("only numeric ids reach the kernel, whatever the names", () => {
  void test("rules from named principals equal rules from the bare ids, and no name appears", () => {
    fc.assert(
      fc.property(
        policyArb(1),
        fc.array(adversarialName, { minLength: 1, maxLength: 6 }),
        ({ config, principals }, names) => {
          const named = namedPrincipals(config.policy, principals.uids, principals.gids, names);
          const desired = renderDesired(config, named);
          assert.deepEqual(desired, renderDesired(config, principals));
          for (const family of FAMILIES) {
            assert.equal(
              countRules(desired[family]),
              expectedRuleCount(config, principals, family),
            );
            const script = renderRestoreScript(
              diffFamily(desired[family], parseIptablesSave("")),
              desired[family],
            );
            for (const name of names) assert.ok(!script.includes(name), JSON.stringify(name));
            assert.ok(!script.includes("\u00a7"));
          }
        },
      ),
      RUNS,
    );
  });

  void test("names resolved through NSS give exactly their accounts' ids", () => {
    const notNumeric = adversarialName.filter((name) => !/^\d+$/.test(name));
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.tuple(notNumeric, fc.integer({ min: 1, max: 0xfffffffe })), {
          minLength: 1,
          maxLength: 8,
          selector: ([name]) => name,
        }),
        notNumeric,
        fc.integer({ min: 1, max: 0xfffffffe }),
        (accounts, groupName, gid) => {
          const uniqueUids = [...new Map(accounts.map(([name, uid]) => [uid, name])).entries()];
          const snapshot: NssSnapshot = {
            passwd: uniqueUids.map(([uid, name]) => ({ name, uid, gid: 0 })),
            groups: [{ name: groupName, gid, members: uniqueUids.map(([, name]) => name) }],
          };
          const users = uniqueUids.map(([, name]) => name);
          const principals = resolvePrincipals("allow", { users, groups: [groupName] }, snapshot);
          assert.deepEqual(
            principals.uids,
            uniqueUids.map(([uid]) => uid).sort((x, y) => x - y),
          );
          assert.deepEqual(principals.gids, [gid]);
          assert.deepEqual(principals.unresolved, []);
          const config = makeConfig({ principals: { users, groups: [groupName] } });
          const script = renderRestoreScript(
            diffFamily(renderDesired(config, principals).ipv4, parseIptablesSave("")),
            renderDesired(config, principals).ipv4,
          );
          assert.equal((script.match(/ -j RETURN$/gm) ?? []).length, principals.uids.length + 1);
          for (const name of [...users, groupName]) assert.ok(!script.includes(name));
        },
      ),
      RUNS,
    );
  });
});

// ---- (c) rule text survives tokenising ----------------------------------------------------

/** A bare token as iptables-save prints it: no blanks, no quotes. */
const bareToken = fc
  .string({ minLength: 1, maxLength: 10 })
  .filter((token) => !/[\s"]/.test(token));
/** Any comment text without backslashes, quoted the way tokenizeRule reads it. */
const commentText = fc
  .string({ maxLength: 24, unit: "binary" })
  .filter((text) => !text.includes("\\"));
const quote = (text: string): string => `"${text.replaceAll('"', '\\"')}"`;
const blanks = fc
  .array(fc.constantFrom(" ", "\t"), { minLength: 1, maxLength: 3 })
  .map((parts) => parts.join(""));

void describe("rule text survives tokenising", () => {
  void test("a spec built from bare tokens and quoted comments tokenises back to the same tokens", () => {
    const part = fc.oneof(
      bareToken.map((token) => ({ text: token, token })),
      commentText.map((text) => ({ text: `--comment ${quote(text)}`, token: ["--comment", text] })),
    );
    fc.assert(
      fc.property(fc.array(fc.tuple(part, blanks), { maxLength: 8 }), blanks, (parts, lead) => {
        const spec = lead + parts.map(([p, gap]) => p.text + gap).join("");
        const tokens = parts.flatMap(([p]) => p.token);
        assert.deepEqual(tokenizeRule(spec), tokens);
      }),
      { numRuns: 500 },
    );
  });

  void test("our tag is found in a tokenised spec wherever the comment stands, quoted or not", () => {
    fc.assert(
      fc.property(
        fc.array(
          bareToken.filter((token) => token !== "--comment"),
          { maxLength: 6 },
        ),
        fc.nat(),
        fc.stringMatching(/^[0-9a-f]{16}$/),
        fc.boolean(),
        (tokens, at, hex, quoted) => {
          const tag = `imds-guard:${hex}`;
          const words = [...tokens];
          words.splice(at % (words.length + 1), 0, "--comment", quoted ? `"${tag}"` : tag);
          assert.equal(tagOf(tokenizeRule(words.join(" "))), tag);
        },
      ),
    );
  });

  void test("a comment escaped the way iptables-save escapes it (\\\", \\\\, \\') reads back as written", () => {
    const saveQuote = (text: string): string => `"${text.replace(/["\\']/g, (ch) => `\\${ch}`)}"`;
    fc.assert(
      fc.property(fc.string({ maxLength: 24 }), (text) => {
        assert.deepEqual(tokenizeRule(`-m comment --comment ${saveQuote(text)} -j ACCEPT`), [
          "-m",
          "comment",
          "--comment",
          text,
          "-j",
          "ACCEPT",
        ]);
      }),
    );
  });
});
