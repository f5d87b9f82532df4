// What an operator relies on from the daemon's reconcile: it installs the policy, writes
// nothing when nothing changed, repairs drift and says which trigger found it, and never
// loosens the rules in force because a config, a restore or IPv6 went wrong. Driven against
// a fake kernel (helpers/fake-iptables.ts) that records every restore script.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { PassThrough } from "node:stream";
import { describe, test } from "node:test";
import { Registry } from "prom-client";

import type { LoadResult } from "../../src/adapters/config-file.js";
import { createLogger } from "../../src/adapters/logger.js";
import type { Family } from "../../src/core/config-model.js";
import { parseConfig } from "../../src/core/config.js";
import { ImdsGuardError } from "../../src/core/errors.js";
import type { NssSnapshot } from "../../src/core/nss.js";
import { CHAIN, countRules } from "../../src/core/ruleset.js";
import type { DesiredFamily } from "../../src/core/ruleset.js";
import type { Dataplane } from "../../src/daemon/dataplane.js";
import { Guard } from "../../src/daemon/guard.js";
import { createGuardMetrics } from "../../src/daemon/metrics.js";
import type { GuardMetrics } from "../../src/daemon/metrics.js";
import type { TriggerBatch, TriggerKind } from "../../src/daemon/scheduler.js";
import type { FakeIptables } from "./helpers/fake-iptables.js";
import { createFakeIptables, restoreError } from "./helpers/fake-iptables.js";

const CONFIG_PATH = "/etc/imds-guard/config.yaml";
const ALLOW = "mode: enforce\nallow:\n  users: [root, alice]\n";
const ALLOW_WITH_BOB = "mode: enforce\nallow:\n  users: [root, alice, bob]\n";
/** users.1 is not a valid name: the problem sits at line 3, column 17. */
const INVALID = 'mode: enforce\nallow:\n  users: [root, "bad name"]\n';
const INVALID_AT = `${CONFIG_PATH}:3:17: allow.users.1: "bad name" is not a valid user name`;
const DENY_APACHE = "deny:\n  users: [apache]\n";

const NSS: NssSnapshot = {
  passwd: [
    { name: "root", uid: 0, gid: 0 },
    { name: "apache", uid: 48, gid: 48 },
    { name: "alice", uid: 1001, gid: 1001 },
    { name: "bob", uid: 1002, gid: 1002 },
  ],
  groups: [],
};

const FOREIGN_ACCEPT = "-d 169.254.169.254/32 -j ACCEPT";

type LogRecord = Record<string, unknown> & { level: number; msg: string };

interface Harness {
  readonly guard: Guard;
  readonly fake: FakeIptables;
  readonly metrics: GuardMetrics;
  /** The config file as the loader will find it next: its text, or the error reading it throws. */
  readonly file: { text: string; error?: Error };
  readonly nss: { snapshot: NssSnapshot };
  readonly clock: { ms: number };
  readonly calls: { wrote: number; opened: number };
  batch(kinds: readonly TriggerKind[], queuedMsAgo?: number): TriggerBatch;
  logs(): LogRecord[];
  /** Restore calls made since the given count, i.e. `fake.restores.slice(since)`. */
  restoresSince(since: number): { family: Family; script: string }[];
}

function harness(text: string, families: readonly Family[] = ["ipv4", "ipv6"]): Harness {
  const fake = createFakeIptables("nft");
  const metrics = createGuardMetrics(new Registry(), false);
  const file: Harness["file"] = { text };
  const nss = { snapshot: NSS };
  const clock = { ms: 1_800_000_000_000 };
  const calls = { wrote: 0, opened: 0 };
  const stream = new PassThrough();
  const chunks: string[] = [];
  stream.on("data", (chunk: Buffer) => chunks.push(chunk.toString("utf8")));
  const loadConfig = (path: string): Promise<LoadResult> => {
    if (file.error) return Promise.reject(file.error);
    const parsed = parseConfig(file.text, path);
    const digest = createHash("sha256").update(file.text).digest("hex");
    return Promise.resolve(parsed.ok ? { ...parsed, text: file.text, digest } : parsed);
  };
  const dataplane: Dataplane = {
    decision: {
      flavour: "nft",
      reason: "test: nft holds the rules",
      otherFlavourHoldsRules: false,
    },
    iptables: fake,
    families,
    warnings: [],
  };
  const guard = new Guard({
    configPath: CONFIG_PATH,
    loadConfig,
    lookup: () => Promise.resolve(nss.snapshot),
    openDataplane: () => {
      calls.opened++;
      return Promise.resolve(dataplane);
    },
    logger: createLogger({ stream, env: {} }),
    metrics,
    now: () => clock.ms,
    onWrote: () => {
      calls.wrote++;
    },
  });
  return {
    guard,
    fake,
    metrics,
    file,
    nss,
    clock,
    calls,
    batch: (kinds, queuedMsAgo = 0) => ({
      kinds: new Set(kinds),
      firstQueuedAt: clock.ms - queuedMsAgo,
    }),
    logs: () =>
      chunks
        .join("")
        .split("\n")
        .filter((line) => line !== "")
        .map((line) => JSON.parse(line) as LogRecord),
    restoresSince: (since) => fake.restores.slice(since),
  };
}

/** A harness whose policy is installed and verified: the state most behaviours start from. */
async function installed(text = ALLOW, families?: readonly Family[]): Promise<Harness> {
  const h = harness(text, families);
  assert.equal(await h.guard.reconcile(h.batch(["start"])), true, h.guard.snapshot().readyReason);
  return h;
}

interface MetricReader {
  get(): Promise<{
    values: readonly { value: number; labels: object; metricName?: string }[];
  }>;
}

/** The value of the series with exactly these labels (0 when it does not exist yet). */
async function sample(
  metric: MetricReader,
  labels: Record<string, string> = {},
  suffix?: string,
): Promise<number> {
  const { values } = await metric.get();
  const wanted = Object.entries(labels).sort();
  const found = values.find((v) => {
    if (suffix !== undefined && v.metricName?.endsWith(suffix) !== true) return false;
    const have = Object.entries(v.labels as Record<string, unknown>)
      .filter(([name]) => name !== "le")
      .sort();
    return JSON.stringify(have) === JSON.stringify(wanted);
  });
  return found?.value ?? 0;
}

/** The sum over every series of a counter (all label values). */
async function total(metric: MetricReader): Promise<number> {
  const { values } = await metric.get();
  return values.reduce((sum, v) => sum + v.value, 0);
}

function ourRules(fake: FakeIptables, family: Family): string[] {
  return fake
    .chains(family)
    .flatMap((chain) =>
      chain.rules
        .filter((spec) => spec.includes("imds-guard:"))
        .map((spec) => `${chain.name} ${spec}`),
    );
}

const golden = (name: string): Promise<string> =>
  readFile(new URL(`../fixtures/golden/${name}`, import.meta.url), "utf8");

// ---------------------------------------------------------------------------------------------

void describe("the first reconcile installs the policy", () => {
  void test("one restore per family, then ready, with the rules gauge set per family", async () => {
    const h = harness(ALLOW);
    assert.equal(await h.guard.reconcile(h.batch(["start"])), true);

    assert.deepEqual(
      h.fake.restores.map((r) => r.family),
      ["ipv4", "ipv6"],
    );
    const snap = h.guard.snapshot();
    assert.equal(snap.ready, true);
    assert.equal(snap.readyReason, "kernel matches the policy");
    assert.equal(await sample(h.metrics.ready), 1);
    assert.equal(await sample(h.metrics.configReloadSuccessful), 1);
    assert.equal(await sample(h.metrics.reconcileTotal, { result: "changed" }), 1);
    assert.equal(h.calls.wrote, 1, "a write schedules the post-write re-checks");
    const policy = snap.policy;
    assert.ok(policy, "the snapshot carries the policy");
    for (const family of ["ipv4", "ipv6"] as const) {
      const desired: DesiredFamily = policy.desired[family];
      assert.equal(await sample(h.metrics.rules, { family }), countRules(desired));
      assert.equal(ourRules(h.fake, family).length, countRules(desired));
      assert.deepEqual(
        h.fake.rules(family, CHAIN),
        desired.chains[0]?.rules.map((rule) => rule.spec),
      );
    }
    assert.equal(await total(h.metrics.driftDetected), 0, "installing is not drift");
  });

  void test("the restore input for a fresh kernel is exactly the golden script", async () => {
    const h = harness(DENY_APACHE);
    assert.equal(await h.guard.reconcile(h.batch(["start"])), true);
    assert.deepEqual(h.fake.restores, [
      { family: "ipv4", script: await golden("deny-apache.ipv4.restore") },
      { family: "ipv6", script: await golden("deny-apache.ipv6.restore") },
    ]);
  });
});

void describe("a reconcile with nothing changed writes nothing", () => {
  const cases: { kinds: TriggerKind[]; intent: string }[] = [
    { kinds: ["poll"], intent: "the drift timer only reads the kernel" },
    { kinds: ["event"], intent: "a kernel event about someone else's rule" },
    { kinds: ["postwrite"], intent: "the re-check after our own write" },
    { kinds: ["retry"], intent: "a retry after a failure that has cleared" },
    { kinds: ["nss"], intent: "NSS asked again, same answers" },
    { kinds: ["file"], intent: "/etc/passwd touched without a change that matters" },
    { kinds: ["config"], intent: "config reloaded with the same bytes" },
    { kinds: ["signal"], intent: "SIGHUP with the same config" },
    { kinds: ["event", "poll", "nss", "config"], intent: "several triggers merged into one run" },
  ];
  for (const { kinds, intent } of cases) {
    void test(`${kinds.join("+")}: ${intent}`, async () => {
      const h = await installed();
      const before = h.fake.restores.length;
      const rulesBefore = ourRules(h.fake, "ipv4");

      assert.equal(await h.guard.reconcile(h.batch(kinds)), true);
      assert.equal(await h.guard.reconcile(h.batch(kinds)), true);

      assert.deepEqual(h.restoresSince(before), [], "no restore at all");
      assert.equal(await sample(h.metrics.reconcileTotal, { result: "unchanged" }), 2);
      assert.equal(await sample(h.metrics.reconcileTotal, { result: "changed" }), 1);
      assert.equal(h.calls.wrote, 1, "only the install scheduled post-write checks");
      assert.deepEqual(ourRules(h.fake, "ipv4"), rulesBefore);
      assert.equal(h.guard.snapshot().ready, true);
      assert.equal(await total(h.metrics.driftDetected), 0);
    });
  }
});

void describe("drift is repaired in one transaction and counted by the trigger that found it", () => {
  const triggers: { kinds: TriggerKind[]; label: string; intent: string }[] = [
    { kinds: ["event"], label: "event", intent: "nft monitor saw the flush" },
    { kinds: ["poll"], label: "poll", intent: "the drift timer found it" },
    { kinds: ["postwrite"], label: "postwrite", intent: "the re-check after our write found it" },
    { kinds: ["retry"], label: "poll", intent: "a retry counts as a poll" },
    { kinds: ["poll", "event"], label: "event", intent: "an event wins over a merged poll" },
  ];
  for (const { kinds, label, intent } of triggers) {
    void test(`iptables -F ${CHAIN}, found by ${kinds.join("+")}: ${intent}`, async () => {
      const h = await installed();
      const wanted = h.fake.chains("ipv4");
      const ipv6Before = h.fake.chains("ipv6");
      const before = h.fake.restores.length;
      h.fake.iptables("ipv4", `-F ${CHAIN}`);
      h.clock.ms += 250;

      assert.equal(await h.guard.reconcile(h.batch(kinds, 250)), true);

      const writes = h.restoresSince(before);
      assert.equal(writes.length, 1, "exactly one restore");
      assert.equal(writes[0]?.family, "ipv4");
      assert.deepEqual(h.fake.chains("ipv4"), wanted, "the kernel is back to the policy");
      assert.deepEqual(h.fake.chains("ipv6"), ipv6Before);
      assert.equal(
        await sample(h.metrics.driftDetected, {
          family: "ipv4",
          reason: "chain_mismatch",
          trigger: label,
        }),
        1,
      );
      assert.equal(await total(h.metrics.driftDetected), 1, "one finding, one count");
      assert.equal(await sample(h.metrics.driftRepairDuration, {}, "_count"), 1);
      assert.equal(await sample(h.metrics.driftRepairDuration, {}, "_sum"), 0.25);
      const drift = h.logs().filter((l) => l.msg === "drift repaired in 250 ms");
      assert.equal(drift.length, 1);
      const [line] = drift;
      assert.ok(line, "a drift line");
      assert.equal(line.level, 40);
      assert.equal(line.family, "ipv4");
      assert.equal(line.trigger, label);
      assert.deepEqual(line.reasons, ["chain_mismatch"]);
      assert.equal(h.guard.snapshot().lastDrift?.trigger, label);
      assert.equal(h.calls.wrote, 2, "the repair schedules post-write re-checks");
      assert.equal(await sample(h.metrics.reconcileTotal, { result: "changed" }), 2);
    });
  }

  const tampering: {
    intent: string;
    tamper: (fake: FakeIptables) => void;
    /** Findings counted per reason; every other reason stays at 0. */
    counts: Record<string, number>;
    foreign?: string;
  }[] = [
    {
      intent:
        "a foreign ACCEPT inserted at OUTPUT 1 pushes both jumps down; it stays, ours go above",
      tamper: (fake) => {
        fake.iptables("ipv4", `-I OUTPUT 1 ${FOREIGN_ACCEPT}`);
      },
      counts: { displaced_jump: 2 },
      foreign: FOREIGN_ACCEPT,
    },
    {
      intent: "our first jump deleted by hand: it is missing and the second one stands at 1",
      tamper: (fake) => {
        const [first = ""] = fake.rules("ipv4", "OUTPUT") ?? [];
        fake.iptables("ipv4", `-D OUTPUT ${first}`);
      },
      counts: { missing_jump: 1, displaced_jump: 1 },
    },
    {
      intent: "a rule appended to our chain by hand",
      tamper: (fake) => {
        fake.iptables("ipv4", `-A ${CHAIN} -j RETURN`);
      },
      counts: { chain_mismatch: 1 },
    },
  ];
  for (const { intent, tamper, counts, foreign } of tampering) {
    void test(`${Object.keys(counts).join("+")}: ${intent}`, async () => {
      const h = await installed();
      const ours = ourRules(h.fake, "ipv4");
      const before = h.fake.restores.length;
      tamper(h.fake);

      assert.equal(await h.guard.reconcile(h.batch(["poll"])), true);

      assert.equal(h.restoresSince(before).length, 1);
      assert.deepEqual(ourRules(h.fake, "ipv4"), ours);
      const output = h.fake.rules("ipv4", "OUTPUT") ?? [];
      if (foreign !== undefined) {
        assert.deepEqual(
          output.slice(0, 2),
          ours.filter((r) => r.startsWith("OUTPUT ")).map((r) => r.slice(7)),
        );
        assert.equal(output[2], foreign, "the foreign rule is kept, below our jumps");
      }
      for (const [reason, count] of Object.entries(counts)) {
        assert.equal(
          await sample(h.metrics.driftDetected, { family: "ipv4", reason, trigger: "poll" }),
          count,
          reason,
        );
      }
      const findings = Object.values(counts).reduce((sum, n) => sum + n, 0);
      assert.equal(await total(h.metrics.driftDetected), findings, "no other reason counted");
      // And the repair itself is stable: the next look finds nothing to do.
      const after = h.fake.restores.length;
      assert.equal(await h.guard.reconcile(h.batch(["postwrite"])), true);
      assert.equal(h.fake.restores.length, after);
    });
  }
});

void describe("a failing restore never removes rules and is reported, not spammed", () => {
  void test("policy change whose IPv4 restore fails: old rules stay, ready red, then recovers", async () => {
    const h = await installed();
    const ipv4Before = h.fake.chains("ipv4");
    h.file.text = ALLOW_WITH_BOB;
    const stderr = "iptables-restore v1.8.9 (nf_tables): line 4 failed: Resource busy\n";
    h.fake.failNextRestore(restoreError("ipv4", "nft", "(the script)", stderr), {
      family: "ipv4",
      times: 2,
    });
    const before = h.fake.restores.length;

    assert.equal(await h.guard.reconcile(h.batch(["config"])), false);

    const snap = h.guard.snapshot();
    assert.equal(snap.ready, false);
    assert.match(snap.readyReason, /^ipv4: \[IMDSG_IPTABLES_RESTORE\] .*Resource busy/);
    assert.equal(await sample(h.metrics.ready), 0);
    assert.equal(
      await sample(h.metrics.restoreErrors, { family: "ipv4", code: "IMDSG_IPTABLES_RESTORE" }),
      1,
    );
    assert.equal(await sample(h.metrics.reconcileTotal, { result: "error" }), 1);
    assert.deepEqual(h.fake.chains("ipv4"), ipv4Before, "IPv4 keeps exactly what it had");
    assert.deepEqual(
      h.restoresSince(before).map((r) => r.family),
      ["ipv4", "ipv6"],
      "IPv6 is not held back by IPv4",
    );
    assert.ok(
      ourRules(h.fake, "ipv6").some((r) => r.includes("--uid-owner 1002")),
      "IPv6 got the new policy",
    );
    const errorLines = (): LogRecord[] => h.logs().filter((l) => l.level === 50);
    assert.equal(errorLines().length, 1);
    assert.equal(errorLines()[0]?.code, "IMDSG_IPTABLES_RESTORE");
    assert.equal(errorLines()[0]?.family, "ipv4");

    // The scheduler retries a few seconds later; the same failure is counted, not logged again.
    h.clock.ms += 5_000;
    assert.equal(await h.guard.reconcile(h.batch(["retry"])), false);
    assert.equal(
      await sample(h.metrics.restoreErrors, { family: "ipv4", code: "IMDSG_IPTABLES_RESTORE" }),
      2,
    );
    assert.equal(errorLines().length, 1, "an identical failure within a minute is not logged");
    assert.deepEqual(h.fake.chains("ipv4"), ipv4Before);

    h.clock.ms += 5_000;
    assert.equal(await h.guard.reconcile(h.batch(["retry"])), true);
    assert.equal(h.guard.snapshot().ready, true);
    assert.equal(h.guard.snapshot().readyReason, "kernel matches the policy");
    assert.equal(await sample(h.metrics.ready), 1);
    assert.ok(
      ourRules(h.fake, "ipv4").some((r) => r.includes("--uid-owner 1002")),
      "IPv4 got the new policy on the retry",
    );
    assert.equal(await total(h.metrics.driftDetected), 0, "a delayed policy change is not drift");
  });

  void test("a restore the kernel refuses is logged with the exact input and stderr", async () => {
    const h = await installed();
    h.fake.iptables("ipv4", `-F ${CHAIN}`);
    h.fake.failNextRestore(undefined, { family: "ipv4" });
    const ipv4Before = h.fake.chains("ipv4");

    assert.equal(await h.guard.reconcile(h.batch(["poll"])), false);

    const [failed] = h.fake.restores.slice(-1);
    const [line] = h.logs().filter((l) => l.level === 50);
    assert.ok(failed && line, "a recorded restore and an error line");
    const details = line.details as { input?: unknown; stderr?: unknown };
    assert.equal(details.input, failed.script, "the operator can replay the exact input");
    assert.equal(typeof details.stderr, "string");
    assert.deepEqual(h.fake.chains("ipv4"), ipv4Before, "the flushed chain is not made worse");
  });

  void test("after a minute of the injected clock the failure is logged again, with the suppressed count", async () => {
    const h = await installed();
    h.fake.iptables("ipv4", `-F ${CHAIN}`);
    h.fake.failNextRestore(undefined, { family: "ipv4", times: 3 });
    for (let i = 0; i < 2; i++) {
      await h.guard.reconcile(h.batch(["retry"]));
      h.clock.ms += 10_000;
    }
    h.clock.ms += 60_000;
    await h.guard.reconcile(h.batch(["retry"]));
    const errors = h.logs().filter((l) => l.level === 50);
    assert.equal(errors.length, 2);
    assert.equal(errors[1]?.suppressed, 1);
  });

  void test("drift whose repair fails is counted under the trigger that revealed it, timed from then", async () => {
    const h = await installed();
    h.fake.iptables("ipv4", `-F ${CHAIN}`);
    h.fake.failNextRestore(undefined, { family: "ipv4" });
    assert.equal(await h.guard.reconcile(h.batch(["event"], 100)), false);
    assert.equal(
      await sample(h.metrics.driftDetected, {
        family: "ipv4",
        reason: "chain_mismatch",
        trigger: "event",
      }),
      1,
      "the drift was found by the event, even if the repair failed",
    );
    assert.ok(
      h.logs().some((l) => l.msg === "drift found; repair failed"),
      "the failed repair says it was drift",
    );
    h.clock.ms += 1_000;
    assert.equal(await h.guard.reconcile(h.batch(["retry"])), true);
    assert.equal(await total(h.metrics.driftDetected), 1, "one drift, counted once");
    assert.equal(await sample(h.metrics.driftRepairDuration, {}, "_sum"), 1.1);
  });
});

void describe("a bad config on reload keeps the last good policy in force", () => {
  const breakages: { intent: string; apply: (h: Harness) => void; logged: string }[] = [
    {
      intent: "an invalid value, reported at file:line:col",
      apply: (h) => {
        h.file.text = INVALID;
      },
      logged: INVALID_AT,
    },
    {
      intent: "the file was deleted (IMDSG_CONFIG_UNREADABLE)",
      apply: (h) => {
        h.file.error = new ImdsGuardError(
          "IMDSG_CONFIG_UNREADABLE",
          `${CONFIG_PATH}: cannot read the config file: no such file`,
          { path: CONFIG_PATH, errno: "ENOENT" },
        );
      },
      logged: `[IMDSG_CONFIG_UNREADABLE] ${CONFIG_PATH}: cannot read the config file`,
    },
  ];
  for (const { intent, apply, logged } of breakages) {
    void test(intent, async () => {
      const h = await installed();
      const kernel = { ipv4: h.fake.chains("ipv4"), ipv6: h.fake.chains("ipv6") };
      const before = h.fake.restores.length;
      apply(h);

      assert.equal(await h.guard.reconcile(h.batch(["config"])), true);

      assert.deepEqual(h.restoresSince(before), [], "no write at all");
      assert.deepEqual(h.fake.chains("ipv4"), kernel.ipv4);
      assert.deepEqual(h.fake.chains("ipv6"), kernel.ipv6);
      assert.equal(await sample(h.metrics.configReloadSuccessful), 0);
      const snap = h.guard.snapshot();
      assert.equal(snap.ready, true, "the kernel still holds a good policy");
      assert.match(snap.readyReason, /last good policy/);
      assert.ok(snap.configError?.includes(logged), snap.configError);
      const rejected = h.logs().filter((l) => l.level === 50);
      assert.equal(rejected.length, 1);
      const [line] = rejected;
      assert.ok(line, "a rejection line");
      assert.equal(line.msg, "config rejected; the last good policy stays in force");
      const errors = line.errors as string[];
      assert.ok(
        errors.some((e) => e.startsWith(logged)),
        JSON.stringify(errors),
      );

      // Drift while the file is bad is still repaired, to the last good policy.
      h.fake.iptables("ipv4", `-F ${CHAIN}`);
      assert.equal(await h.guard.reconcile(h.batch(["poll"])), true);
      assert.deepEqual(h.fake.chains("ipv4"), kernel.ipv4);

      // The operator fixes the file with a new policy: it is applied, and the metric recovers.
      h.file.text = ALLOW_WITH_BOB;
      delete h.file.error;
      const fixed = h.fake.restores.length;
      assert.equal(await h.guard.reconcile(h.batch(["config"])), true);
      assert.deepEqual(
        h.restoresSince(fixed).map((r) => r.family),
        ["ipv4", "ipv6"],
      );
      assert.ok(
        ourRules(h.fake, "ipv4").some((r) => r.includes("--uid-owner 1002")),
        "the fixed config is applied",
      );
      assert.equal(await sample(h.metrics.configReloadSuccessful), 1);
      assert.equal(h.guard.snapshot().configError, undefined);
      assert.equal(h.guard.snapshot().readyReason, "kernel matches the policy");
    });
  }
});

void describe("a policy change is applied and is not drift", () => {
  const changes: { intent: string; kinds: TriggerKind[]; change: (h: Harness) => void }[] = [
    {
      intent: "the config names one more user",
      kinds: ["config"],
      change: (h) => {
        h.file.text = ALLOW_WITH_BOB;
      },
    },
    {
      intent: "NSS now gives alice another uid",
      kinds: ["nss"],
      change: (h) => {
        h.nss.snapshot = {
          ...NSS,
          passwd: NSS.passwd.map((e) => (e.name === "alice" ? { ...e, uid: 1500 } : e)),
        };
      },
    },
  ];
  for (const { intent, kinds, change } of changes) {
    void test(intent, async () => {
      const h = await installed();
      const before = h.fake.restores.length;
      const logsBefore = h.logs().length;
      change(h);

      assert.equal(await h.guard.reconcile(h.batch(kinds)), true);

      assert.deepEqual(
        h.restoresSince(before).map((r) => r.family),
        ["ipv4", "ipv6"],
      );
      assert.equal(await total(h.metrics.driftDetected), 0);
      assert.equal(await sample(h.metrics.driftRepairDuration, {}, "_count"), 0);
      assert.equal(h.guard.snapshot().lastDrift, undefined);
      const lines = h.logs().slice(logsBefore);
      const applied = lines.filter((l) => l.msg === "policy applied");
      assert.deepEqual(
        applied.map((l) => l.family),
        ["ipv4", "ipv6"],
      );
      assert.equal(
        lines.filter((l) => l.msg.startsWith("drift")).length,
        0,
        "no drift line either",
      );
      // The new policy is now the baseline: a later flush is drift again.
      h.fake.iptables("ipv4", `-F ${CHAIN}`);
      assert.equal(await h.guard.reconcile(h.batch(["poll"])), true);
      assert.equal(await total(h.metrics.driftDetected), 1);
    });
  }
});

void describe("an invalid config at the very first load", () => {
  void test("loadConfig() returns false and no reconcile ever writes", async () => {
    const h = harness(INVALID);
    assert.equal(await h.guard.loadConfig(), false);
    assert.equal(await h.guard.reconcile(h.batch(["start"])), false);
    assert.equal(await h.guard.reconcile(h.batch(["poll"])), false);

    assert.deepEqual(h.fake.restores, []);
    assert.equal(h.calls.opened, 0, "the kernel is not even looked at");
    const snap = h.guard.snapshot();
    assert.equal(snap.ready, false);
    assert.equal(snap.readyReason, "no valid config has been loaded");
    assert.equal(snap.policy, undefined);
    assert.equal(await sample(h.metrics.configReloadSuccessful), 0);
    assert.equal(await sample(h.metrics.ready), 0);
    const rejected = h.logs().filter((l) => l.msg === "config rejected; no policy loaded");
    const [line] = rejected;
    assert.ok(line, "a rejection line");
    const errors = line.errors as string[];
    assert.ok(
      errors.some((e) => e.startsWith(INVALID_AT)),
      JSON.stringify(errors),
    );
  });
});

void describe("IPv6 trouble never stops IPv4", () => {
  void test("ip6tables-save failing: IPv4 is applied, ready is false and names ipv6", async () => {
    const h = harness(ALLOW);
    h.fake.failSaves(1000, "ipv6");

    assert.equal(await h.guard.reconcile(h.batch(["start"])), false);

    assert.deepEqual(
      h.fake.restores.map((r) => r.family),
      ["ipv4"],
    );
    assert.notDeepEqual(ourRules(h.fake, "ipv4"), [], "IPv4 is guarded");
    assert.deepEqual(ourRules(h.fake, "ipv6"), []);
    const snap = h.guard.snapshot();
    assert.equal(snap.ready, false);
    assert.match(snap.readyReason, /^ipv6: \[IMDSG_IPTABLES_SAVE\]/);
    assert.doesNotMatch(snap.readyReason, /ipv4/);
    assert.equal(
      await sample(h.metrics.restoreErrors, { family: "ipv6", code: "IMDSG_IPTABLES_SAVE" }),
      1,
    );
    assert.equal(
      await sample(h.metrics.rules, { family: "ipv4" }),
      ourRules(h.fake, "ipv4").length,
    );

    // Still down: IPv4 drift is repaired all the same.
    h.fake.iptables("ipv4", `-F ${CHAIN}`);
    const before = h.fake.restores.length;
    assert.equal(await h.guard.reconcile(h.batch(["poll"])), false);
    assert.deepEqual(
      h.restoresSince(before).map((r) => r.family),
      ["ipv4"],
    );
    assert.notDeepEqual(h.fake.rules("ipv4", CHAIN) ?? [], [], "IPv4 repaired");
  });

  void test("ip6tables-restore failing: IPv4 is applied, ready is false and names ipv6", async () => {
    const h = harness(ALLOW);
    h.fake.failNextRestore(undefined, { family: "ipv6" });

    assert.equal(await h.guard.reconcile(h.batch(["start"])), false);

    assert.notDeepEqual(ourRules(h.fake, "ipv4"), [], "IPv4 is guarded");
    assert.deepEqual(ourRules(h.fake, "ipv6"), []);
    assert.match(h.guard.snapshot().readyReason, /^ipv6: \[IMDSG_IPTABLES_RESTORE\]/);
  });

  void test("a deny-list with an unresolved name still applies IPv4 while ip6tables-save fails", async () => {
    const h = await installed(DENY_APACHE);
    h.nss.snapshot = { passwd: [], groups: [] };
    const ipv4 = ourRules(h.fake, "ipv4");
    h.fake.failSaves(1000, "ipv6");
    h.fake.iptables("ipv4", `-I OUTPUT 1 ${FOREIGN_ACCEPT}`);
    const before = h.fake.restores.length;

    assert.equal(await h.guard.reconcile(h.batch(["nss"])), false);

    assert.deepEqual(
      h.restoresSince(before).map((r) => r.family),
      ["ipv4"],
      "IPv4's displaced jumps are put back on top",
    );
    assert.deepEqual(ourRules(h.fake, "ipv4"), ipv4, "uid 48 still refused over IPv4");
    assert.match(h.guard.snapshot().readyReason, /^ipv6: /);
  });

  void test("IPv4 drift is still counted as drift while IPv6 keeps failing", async () => {
    const h = harness(ALLOW);
    h.fake.failSaves(1000, "ipv6");
    assert.equal(await h.guard.reconcile(h.batch(["start"])), false);
    h.fake.iptables("ipv4", `-F ${CHAIN}`);

    assert.equal(await h.guard.reconcile(h.batch(["poll"])), false);

    assert.equal(
      await sample(h.metrics.driftDetected, {
        family: "ipv4",
        reason: "chain_mismatch",
        trigger: "poll",
      }),
      1,
    );
  });
});

void describe("a deny-list never shrinks because NSS forgot a name", () => {
  void test("apache unknown to NSS on re-resolve: --uid-owner 48 stays in the kernel", async () => {
    const h = await installed(DENY_APACHE);
    const kernel = { ipv4: h.fake.chains("ipv4"), ipv6: h.fake.chains("ipv6") };
    assert.ok(
      (h.fake.rules("ipv4", CHAIN) ?? []).some((r) => r.includes("--uid-owner 48")),
      "apache is refused",
    );
    const before = h.fake.restores.length;
    h.nss.snapshot = { passwd: NSS.passwd.filter((e) => e.name !== "apache"), groups: [] };

    assert.equal(await h.guard.reconcile(h.batch(["nss"])), true);

    assert.deepEqual(h.restoresSince(before), [], "nothing rewritten");
    assert.deepEqual(h.fake.chains("ipv4"), kernel.ipv4);
    assert.deepEqual(h.fake.chains("ipv6"), kernel.ipv6);
    const policy = h.guard.snapshot().policy;
    assert.ok(policy, "the snapshot carries the policy");
    assert.deepEqual(policy.principals.uids, [48]);
    assert.ok(
      policy.unresolved.some((line) => line.includes("keeping the refusal of uid(s) [48]")),
      JSON.stringify(policy.unresolved),
    );
    const warned = h.logs().filter((l) => l.level === 40 && l.msg.includes("[48]"));
    assert.equal(warned.length, 1);

    // Drift while the name is still unknown is repaired with the denial kept.
    h.fake.iptables("ipv4", `-F ${CHAIN}`);
    assert.equal(await h.guard.reconcile(h.batch(["poll"])), true);
    assert.deepEqual(h.fake.chains("ipv4"), kernel.ipv4);
    // Asking NSS again without an answer does not warn again.
    assert.equal(await h.guard.reconcile(h.batch(["nss"])), true);
    assert.equal(h.logs().filter((l) => l.level === 40 && l.msg.includes("[48]")).length, 1);
  });

  void test("IPv4-only host: our chain flushed just before NSS forgets apache, the denial still comes back", async () => {
    const h = await installed(DENY_APACHE, ["ipv4"]);
    const kernel = h.fake.chains("ipv4");
    h.fake.iptables("ipv4", `-F ${CHAIN}`);
    h.nss.snapshot = { passwd: [], groups: [] };

    assert.equal(await h.guard.reconcile(h.batch(["nss"])), true);

    assert.deepEqual(h.fake.chains("ipv4"), kernel, "uid 48 is refused again");
  });
});
