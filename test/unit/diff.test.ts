// Drift: what imds-guard finds when the kernel no longer holds what it wrote, and the one
// restore transaction that puts it back. Every case checks that foreign rules are never
// deleted or moved and never even named in the script: ours move around them instead.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { diffFamily, planIsEmpty, type DriftReason, type FamilyPlan } from "../../src/core/diff.js";
import { parseIptablesSave } from "../../src/core/iptables-save.js";
import { renderRestoreScript } from "../../src/core/restore-script.js";
import {
  absentFamily,
  CHAIN,
  REFUSE_CHAIN,
  renderDesired,
  type DesiredFamily,
} from "../../src/core/ruleset.js";
import { IMDS_V4, IMDS_V6, makeConfig, makePrincipals } from "./helpers/config.js";
import {
  applyRestore,
  chainsOf,
  filterChains,
  renderSave,
  type Foreign,
  type SaveChain,
} from "./helpers/save-text.js";

const ROOT_ACCEPT = '-m owner --uid-owner 0 -m comment --comment "root: added by hand" -j ACCEPT';
const OPS_ACCEPT = "-d 169.254.169.254/32 -m owner --uid-owner 1000 -j ACCEPT";
const INTRUDER = "-m owner --uid-owner 666 -j RETURN";
/** Our jump's text without our tag: someone's copy, not ours. */
const UNTAGGED_COPY = `-d ${IMDS_V4} -j ${CHAIN}`;
const FOREIGN_TEXTS = [
  ROOT_ACCEPT,
  OPS_ACCEPT,
  INTRUDER,
  UNTAGGED_COPY,
  "uid-owner 666",
  "uid-owner 0 ",
  "root: added",
];

const config = makeConfig({ principals: { users: ["alice"], groups: ["imds"] } });
const principals = makePrincipals("allow", [1000], [2000]);
const desired = renderDesired(config, principals);
const v4 = desired.ipv4;

const jump = (desiredFamily: DesiredFamily, index: number): string => {
  const rule = desiredFamily.jumps[index];
  assert.ok(rule, `jump ${index}`);
  return rule.spec;
};

/** Save text of a kernel that held `start` and was then changed by `edit`. */
function kernel(
  start: DesiredFamily,
  edit: (chains: Map<string, SaveChain>) => void = () => undefined,
  foreign: Foreign = {},
): string {
  const chains = filterChains(start, foreign);
  const byName = new Map(chains.map((chain) => [chain.name, chain]));
  edit(byName);
  return renderSave(start.family, [...byName.values()], foreign);
}

function chain(chains: Map<string, SaveChain>, name: string): SaveChain {
  const found = chains.get(name);
  assert.ok(found, name);
  return found;
}

// An older policy: uid 999 instead of 1000, and a second target (the ECS task metadata address).
const older = renderDesired(
  makeConfig({ targets: { ipv4: [IMDS_V4, "169.254.170.2/32"], ipv6: [IMDS_V6] } }),
  makePrincipals("allow", [999], [2000]),
);

interface DriftCase {
  readonly name: string;
  readonly intent: string;
  readonly want: DesiredFamily;
  readonly save: string;
  readonly reasons: readonly DriftReason[];
  readonly refillChains: boolean;
  /** Exact saved text of our OUTPUT rules the plan deletes, in kernel order. */
  readonly deleteJumps: readonly string[];
  readonly insertJumps: boolean;
  readonly removeChains: readonly string[];
}

const cases: readonly DriftCase[] = [
  {
    name: "in sync",
    intent:
      "the kernel holds exactly our rules among foreign ones and other tables: nothing to do, no script",
    want: v4,
    save: kernel(v4, undefined, {
      after: [ROOT_ACCEPT, UNTAGGED_COPY],
      otherChains: { "DOCKER-USER": [INTRUDER] },
      otherTables: true,
      legacyWarning: true,
    }),
    reasons: [],
    refillChains: false,
    deleteJumps: [],
    insertJumps: false,
    removeChains: [],
  },
  {
    name: "fresh kernel",
    intent:
      "after a reboot nothing of ours exists: both chains created and filled, both jumps inserted",
    want: v4,
    save: kernel(absentFamily("ipv4"), undefined, { after: [ROOT_ACCEPT] }),
    reasons: ["missing_chain", "missing_chain", "missing_jump", "missing_jump"],
    refillChains: true,
    deleteJumps: [],
    insertJumps: true,
    removeChains: [],
  },
  {
    name: "flushed chain",
    intent:
      "`iptables -F IMDS-GUARD` leaves the jumps pointing at an empty chain (everyone allowed): refill",
    want: v4,
    save: kernel(v4, (chains) => (chain(chains, CHAIN).rules = [])),
    reasons: ["chain_mismatch"],
    refillChains: true,
    deleteJumps: [],
    insertJumps: false,
    removeChains: [],
  },
  {
    name: "rule altered",
    intent:
      "our REJECT replaced in place by an ACCEPT that keeps our comment: the tag alone does not fool the diff",
    want: v4,
    save: kernel(v4, (chains) => {
      const refuse = chain(chains, REFUSE_CHAIN);
      refuse.rules = refuse.rules.map((spec) =>
        spec.replace("-j REJECT --reject-with tcp-reset", "-j ACCEPT"),
      );
    }),
    reasons: ["chain_mismatch"],
    refillChains: true,
    deleteJumps: [],
    insertJumps: false,
    removeChains: [],
  },
  {
    name: "foreign rule in our chain",
    intent:
      "someone inserts an allow for uid 666 inside our chain: refilled (which flushes it), never deleted by name",
    want: v4,
    save: kernel(v4, (chains) => chain(chains, CHAIN).rules.splice(1, 0, INTRUDER)),
    reasons: ["chain_mismatch"],
    refillChains: true,
    deleteJumps: [],
    insertJumps: false,
    removeChains: [],
  },
  {
    name: "jump missing",
    intent:
      "the conntrack jump was deleted (DNAT bypass open): all our jumps are rewritten at the top",
    want: v4,
    save: kernel(v4, (chains) => chain(chains, "OUTPUT").rules.splice(1, 1), {
      after: [ROOT_ACCEPT],
    }),
    reasons: ["missing_jump"],
    refillChains: false,
    deleteJumps: [jump(v4, 0)],
    insertJumps: true,
    removeChains: [],
  },
  {
    name: "jumps displaced",
    intent:
      "a foreign ACCEPT inserted at OUTPUT 1 lets packets skip us: ours deleted by text and re-inserted at 1..n",
    want: v4,
    save: kernel(v4, undefined, { before: [OPS_ACCEPT], after: [ROOT_ACCEPT] }),
    reasons: ["displaced_jump", "displaced_jump"],
    refillChains: false,
    deleteJumps: [jump(v4, 0), jump(v4, 1)],
    insertJumps: true,
    removeChains: [],
  },
  {
    name: "jumps swapped",
    intent:
      "both jumps present but in the wrong order: rewritten, so the next diff finds them in place",
    want: v4,
    save: kernel(v4, (chains) => chain(chains, "OUTPUT").rules.reverse()),
    reasons: ["displaced_jump", "displaced_jump"],
    refillChains: false,
    deleteJumps: [jump(v4, 1), jump(v4, 0)],
    insertJumps: true,
    removeChains: [],
  },
  {
    name: "duplicate jump",
    intent:
      "a second copy of our first jump (a half-applied older run): every copy deleted, one of each inserted",
    want: v4,
    save: kernel(v4, (chains) => chain(chains, "OUTPUT").rules.push(jump(v4, 0)), {
      after: [ROOT_ACCEPT],
    }),
    reasons: ["duplicate"],
    refillChains: false,
    deleteJumps: [jump(v4, 0), jump(v4, 1), jump(v4, 0)],
    insertJumps: true,
    removeChains: [],
  },
  {
    name: "jump edited",
    intent:
      "our jump rewritten to ACCEPT with our comment kept: it is ours, stale, and goes by its exact text",
    want: v4,
    save: kernel(v4, (chains) => {
      const output = chain(chains, "OUTPUT");
      output.rules = output.rules.map((spec, i) =>
        i === 0 ? spec.replace(`-j ${CHAIN}`, "-j ACCEPT") : spec,
      );
    }),
    reasons: ["missing_jump", "stale_rule"],
    refillChains: false,
    deleteJumps: [jump(v4, 0).replace(`-j ${CHAIN}`, "-j ACCEPT"), jump(v4, 1)],
    insertJumps: true,
    removeChains: [],
  },
  {
    name: "older policy",
    intent:
      "the previous policy allowed uid 999 and guarded a second target: chain refilled, stale jumps deleted",
    want: v4,
    save: kernel(older.ipv4, undefined, { after: [ROOT_ACCEPT] }),
    reasons: ["chain_mismatch", "stale_rule", "stale_rule"],
    refillChains: true,
    deleteJumps: [
      jump(older.ipv4, 0),
      jump(older.ipv4, 1),
      jump(older.ipv4, 2),
      jump(older.ipv4, 3),
    ],
    insertJumps: true,
    removeChains: [],
  },
  {
    name: "target replaced",
    intent:
      "the only target changed: old jumps are stale, new ones missing, both handled in one transaction",
    want: renderDesired(
      makeConfig({ targets: { ipv4: ["169.254.170.2/32"], ipv6: [] } }),
      principals,
    ).ipv4,
    save: kernel(v4, undefined, { before: [OPS_ACCEPT] }),
    reasons: ["missing_jump", "missing_jump", "stale_rule", "stale_rule"],
    refillChains: false,
    deleteJumps: [jump(v4, 0), jump(v4, 1)],
    insertJumps: true,
    removeChains: [],
  },
  {
    name: "family dropped",
    intent:
      "ipv6 targets removed from the config while our v6 chains exist: jumps deleted, chains flushed and removed",
    want: renderDesired(makeConfig({ targets: { ipv4: [IMDS_V4], ipv6: [] } }), principals).ipv6,
    save: kernel(desired.ipv6, undefined, {
      before: [OPS_ACCEPT.replace(IMDS_V4, IMDS_V6)],
      after: [ROOT_ACCEPT],
    }),
    reasons: ["stale_rule", "stale_rule", "stale_rule", "stale_rule"],
    refillChains: false,
    deleteJumps: [jump(desired.ipv6, 0), jump(desired.ipv6, 1)],
    insertJumps: false,
    removeChains: [CHAIN, REFUSE_CHAIN],
  },
  {
    name: "family dropped, chains only",
    intent:
      "someone deleted our jumps by hand but left the chains: uninstall removes the chains alone",
    want: absentFamily("ipv4"),
    save: kernel(v4, (chains) => (chain(chains, "OUTPUT").rules = [ROOT_ACCEPT])),
    reasons: ["stale_rule", "stale_rule"],
    refillChains: false,
    deleteJumps: [],
    insertJumps: false,
    removeChains: [CHAIN, REFUSE_CHAIN],
  },
  {
    name: "family absent",
    intent: "a family without targets on a kernel with nothing of ours: nothing to do",
    want: absentFamily("ipv6"),
    save: kernel(absentFamily("ipv6"), undefined, { after: [ROOT_ACCEPT], otherTables: true }),
    reasons: [],
    refillChains: false,
    deleteJumps: [],
    insertJumps: false,
    removeChains: [],
  },
];

function scriptLines(plan: FamilyPlan, want: DesiredFamily): string[] {
  return renderRestoreScript(plan, want)
    .split("\n")
    .filter((line) => line !== "");
}

void describe("drift is found, named and planned away", () => {
  for (const c of cases) {
    void test(`${c.name}: ${c.intent}`, () => {
      const plan = diffFamily(c.want, parseIptablesSave(c.save));
      assert.deepEqual(
        plan.findings.map((finding) => finding.reason),
        c.reasons,
      );
      for (const finding of plan.findings) assert.ok(finding.detail.length > 0);
      assert.equal(plan.family, c.want.family);
      assert.equal(plan.refillChains, c.refillChains, "refillChains");
      assert.deepEqual(
        plan.deleteJumps.map((rule) => rule.spec),
        c.deleteJumps,
        "deleteJumps",
      );
      assert.deepEqual(plan.insertJumps, c.insertJumps ? c.want.jumps : [], "insertJumps");
      assert.deepEqual(plan.removeChains, c.removeChains, "removeChains");
      // Findings and work go together: a plan never acts silently or reports without acting.
      assert.equal(planIsEmpty(plan), c.reasons.length === 0);
    });
  }
});

void describe("the restore script for a drift touches only what is ours", () => {
  for (const c of cases) {
    void test(c.name, () => {
      const plan = diffFamily(c.want, parseIptablesSave(c.save));
      const script = renderRestoreScript(plan, c.want);
      if (planIsEmpty(plan)) {
        assert.equal(script, "");
        return;
      }
      const lines = scriptLines(plan, c.want);
      assert.equal(lines[0], "*filter");
      assert.equal(lines.at(-1), "COMMIT");

      // Never a foreign rule, never a chain that is not ours.
      for (const text of FOREIGN_TEXTS)
        assert.ok(!script.includes(text), `script mentions foreign "${text}"`);
      for (const line of lines.slice(1, -1)) {
        if (line.startsWith(":") || line.startsWith("-X ")) {
          assert.match(line, /^(:IMDS-GUARD(-REFUSE)? - \[0:0\]|-X IMDS-GUARD(-REFUSE)?)$/);
        } else {
          assert.match(
            line,
            /^-[ADI] (OUTPUT|IMDS-GUARD|IMDS-GUARD-REFUSE) .*--comment "imds-guard:[0-9a-f]{16}"/,
          );
        }
      }

      // Deletions by exact saved text, one line per copy, before any insertion.
      const deletes = lines.filter((line) => line.startsWith("-D "));
      assert.deepEqual(
        deletes,
        c.deleteJumps.map((spec) => `-D OUTPUT ${spec}`),
      );
      const inserts = lines.filter((line) => line.startsWith("-I "));
      assert.deepEqual(
        inserts,
        c.insertJumps ? c.want.jumps.map((rule, i) => `-I OUTPUT ${i + 1} ${rule.spec}`) : [],
      );
      if (deletes.length > 0 && inserts.length > 0) {
        assert.ok(lines.lastIndexOf(deletes.at(-1) ?? "") < lines.indexOf(inserts[0] ?? ""));
      }

      // Refilling declares (flushes) both chains and appends every wanted rule in order.
      const appends = lines.filter((line) => line.startsWith("-A "));
      const wantedAppends = c.refillChains
        ? c.want.chains.flatMap((ch) => ch.rules.map((rule) => `-A ${ch.name} ${rule.spec}`))
        : [];
      assert.deepEqual(appends, wantedAppends);

      // Removal: chains declared (flushed) first, their jumps gone, then deleted.
      for (const name of c.removeChains) {
        assert.ok(lines.indexOf(`:${name} - [0:0]`) < lines.indexOf(`-X ${name}`));
        assert.ok(lines.indexOf(`-X ${name}`) > lines.lastIndexOf(deletes.at(-1) ?? "*filter"));
      }
    });
  }

  void test("a foreign rule is never in deleteJumps, even when it is our jump's twin without the tag", () => {
    const save = kernel(v4, (chains) =>
      chain(chains, "OUTPUT").rules.unshift(UNTAGGED_COPY, OPS_ACCEPT),
    );
    const plan = diffFamily(v4, parseIptablesSave(save));
    assert.deepEqual(
      plan.findings.map((finding) => finding.reason),
      ["displaced_jump", "displaced_jump"],
    );
    assert.ok(plan.deleteJumps.every((rule) => rule.tag !== undefined));
    assert.deepEqual(
      plan.deleteJumps.map((rule) => rule.position),
      [3, 4],
    );
  });
});

void describe("after the plan, the kernel is in sync and foreign rules are untouched", () => {
  // The script is run by a strict iptables-restore stand-in (it throws where the kernel would
  // refuse a line); diffing the result must find nothing: a second reconcile writes nothing.
  for (const c of cases) {
    void test(c.name, () => {
      const before = parseIptablesSave(c.save);
      const plan = diffFamily(c.want, before);
      const afterChains = applyRestore(chainsOf(before), renderRestoreScript(plan, c.want));
      const after = parseIptablesSave(renderSave(c.want.family, afterChains));
      assert.deepEqual(diffFamily(c.want, after).findings, []);

      // Ours stand at OUTPUT 1..n; every foreign rule is still there, in its old relative order.
      const output = after.chains.get("OUTPUT") ?? [];
      assert.deepEqual(
        output.slice(0, c.want.jumps.length).map((rule) => rule.spec),
        c.want.jumps.map((rule) => rule.spec),
      );
      const foreign = (table: typeof before): string[] =>
        [...table.chains]
          .filter(([name]) => name !== CHAIN && name !== REFUSE_CHAIN)
          .flatMap(([name, rules]) =>
            rules.filter((rule) => rule.tag === undefined).map((rule) => `${name} ${rule.spec}`),
          );
      assert.deepEqual(foreign(after), foreign(before));
      assert.equal(after.chains.has(CHAIN), c.want.installed);
    });
  }
});

void describe("uninstalling next to a foreign rule that jumps to our chain", () => {
  // A hand-made or pre-tag rule `-A OUTPUT -d 169.254.169.254/32 -j IMDS-GUARD` is not ours,
  // so it must stay; but then `-X IMDS-GUARD` fails ("Device or resource busy"), and with it
  // the whole transaction, so even our own jumps are never removed and every retry fails.
  void test("the restore script still applies: the referenced chain is flushed and kept, and reported", () => {
    const save = kernel(v4, undefined, { after: [UNTAGGED_COPY] });
    const before = parseIptablesSave(save);
    const want = absentFamily("ipv4");
    const plan = diffFamily(want, before);
    const after = applyRestore(chainsOf(before), renderRestoreScript(plan, want));
    assert.deepEqual(after.find((c) => c.name === "OUTPUT")?.rules, [UNTAGGED_COPY]);
    assert.deepEqual(after.find((c) => c.name === CHAIN)?.rules, []);
  });
});
