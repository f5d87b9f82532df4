// The real `imds-guard run` daemon inside a testbed's instance namespace: start-up and its HTTP
// surface, systemd notify, repair of ruleset drift, identity and config changes, crashes,
// restarts and the legacy flavour, each judged by what a real uid's connection experiences.
// Needs root and `npm run build`; every iptables/nft command runs inside a throwaway namespace.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFile, rm } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { execa } from "execa";
import {
  createTestbed,
  isAlive,
  type Family,
  type ProbeUser,
  type ProberCounts,
  type SpawnedProcess,
  type Testbed,
  type TestGroup,
  type TestUser,
} from "./harness/index.js";
import {
  assertAllowed,
  assertRefused,
  guardConfig,
  http,
  ourJumps,
  returnsForUid,
  saved,
  scrape,
  startGuard,
  type GuardConfig,
  type Metrics,
} from "./daemon/guard-client.js";
import { startNotifyListener, type NotifyMessage } from "./daemon/notify-listener.js";
import { assertBuilt, iptablesIn, until } from "./support.js";

const FAMILIES: readonly Family[] = ["ipv4", "ipv6"];
const REPAIR_COUNT = "imds_guard_drift_repair_duration_seconds_count";
const DRIFT = "imds_guard_drift_detected_total";
const RELOAD_OK = "imds_guard_config_last_reload_successful";
const RECONCILES = "imds_guard_reconcile_total";
/** Generous: the daemon normally reacts within a few hundred ms. */
const REACT_MS = 10_000;

interface Principals {
  readonly users?: readonly string[];
  readonly groups?: readonly string[];
}

/** An enforcing allow-list with intervals short enough for tests. */
function allowYaml(allow: Principals, extra: readonly string[] = []): string {
  return [
    "mode: enforce",
    "allow:",
    ...(allow.users ? [`  users: [${allow.users.join(", ")}]`] : []),
    ...(allow.groups ? [`  groups: [${allow.groups.join(", ")}]`] : []),
    "drift_check_interval: 500ms",
    // Long on purpose: identity changes must be noticed through the watched files, not this.
    "nss_refresh_interval: 60s",
    ...extra,
    "",
  ].join("\n");
}

/** A valid allow-list followed by a misspelt key on the returned 1-based line. */
function typoYaml(allow: Principals): { yaml: string; line: number } {
  const valid = allowYaml(allow);
  return { yaml: `${valid}mdoe: enforce\n`, line: valid.split("\n").length };
}

/**
 * One testbed per describe block, plus things to undo after it (config dirs, listeners). The
 * testbed is cleaned up even when a later before() hook failed half-way.
 */
function blockTestbed(): { readonly testbed: Testbed; defer(undo: () => Promise<void>): void } {
  let current: Testbed | undefined;
  const undos: (() => Promise<void>)[] = [];
  before(async () => {
    assertBuilt();
    current = await createTestbed();
  });
  after(async () => {
    const problems: unknown[] = [];
    for (const undo of [() => current?.cleanup() ?? Promise.resolve(), ...undos.reverse()]) {
      await undo().catch((error: unknown) => problems.push(error));
    }
    if (problems.length > 0) throw new AggregateError(problems, "cleanup failed");
  });
  return {
    get testbed(): Testbed {
      assert.ok(current, "the testbed was not created");
      return current;
    },
    defer(undo) {
      undos.push(undo);
    },
  };
}

async function assertEnforced(
  testbed: Testbed,
  allowed: readonly ProbeUser[],
  refused: readonly ProbeUser[],
): Promise<void> {
  for (const family of FAMILIES) {
    for (const user of allowed) await assertAllowed(testbed, user, family);
    for (const user of refused) await assertRefused(testbed, user, family);
  }
}

async function waitForMetrics(
  testbed: Testbed,
  what: string,
  accept: (metrics: Metrics) => boolean,
): Promise<Metrics> {
  let last: Metrics | undefined;
  try {
    return await until(
      what,
      async () => {
        last = await scrape(testbed);
        return accept(last) ? last : undefined;
      },
      REACT_MS,
    );
  } catch (error) {
    throw new Error(`${String(error)}\nlast /metrics:\n${last?.text ?? "(none)"}`, {
      cause: error,
    });
  }
}

async function waitForSave(
  testbed: Testbed,
  what: string,
  accept: (save: string) => boolean,
  family: Family = "ipv4",
): Promise<string> {
  return until(
    what,
    async () => {
      const save = await saved(testbed, family);
      return accept(save) ? save : undefined;
    },
    REACT_MS,
  );
}

/** Runs an iptables-nft-restore --noflush transaction, so the daemon cannot act half-way. */
async function restoreIn(testbed: Testbed, family: Family, script: string): Promise<void> {
  const tool = family === "ipv4" ? "iptables-nft-restore" : "ip6tables-nft-restore";
  const result = await testbed.exec([tool, "--noflush"], { input: script });
  assert.equal(result.exitCode, 0, `${tool}: ${result.stderr}\n${script}`);
}

/** usermod, gpasswd and groupdel, retried while a concurrent test holds the passwd/group lock. */
async function shadowTool(argv: readonly string[]): Promise<void> {
  const [file, ...args] = argv;
  assert.ok(file !== undefined);
  for (let attempt = 0; ; attempt += 1) {
    const result: { exitCode?: number; stderr: string } = await execa(file, args, {
      reject: false,
    });
    if (result.exitCode === 0) return;
    if (!/lock/i.test(result.stderr) || attempt >= 20) {
      assert.fail(`${argv.join(" ")} failed (${String(result.exitCode)}): ${result.stderr}`);
    }
    await sleep(50 + Math.random() * 200);
  }
}

function uidOnly(user: TestUser): ProbeUser {
  return { uid: user.uid, gid: user.gid };
}

/** The daemon re-checks the kernel this long after each write (daemon.ts POSTWRITE_DELAYS_MS). */
const POSTWRITE_DELAYS_MS = [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000];

/**
 * Waits, if need be, until no post-write re-check is due within the next 1.5 s, so that drift
 * made now is found by the poll and labelled trigger="poll" rather than "postwrite".
 */
async function clearOfPostwriteChecks(daemon: SpawnedProcess): Promise<void> {
  let lastWrite = 0;
  for (const line of daemon.output().split("\n")) {
    let entry: { msg?: unknown; time?: unknown };
    try {
      entry = JSON.parse(line) as typeof entry;
    } catch {
      continue; // not a log line, or one still being written
    }
    const msg = String(entry.msg);
    if (msg === "policy applied" || msg.startsWith("drift repaired")) {
      lastWrite = Math.max(lastWrite, Number(entry.time));
    }
  }
  assert.ok(lastWrite > 0, `no write in the daemon's log:\n${daemon.output()}`);
  for (;;) {
    const now = Date.now();
    const next = POSTWRITE_DELAYS_MS.map((ms) => lastWrite + ms).find((at) => at > now - 300);
    if (next === undefined || next - now > 1_500) return;
    await sleep(next - now + 300);
  }
}

void describe("start-up", () => {
  const block = blockTestbed();
  let trusted: TestUser;
  let refused: TestUser;
  let config: GuardConfig;

  before(async () => {
    const { testbed } = block;
    trusted = await testbed.createUser("trusted");
    refused = await testbed.createUser("refused");
    config = await guardConfig(allowYaml({ users: [trusted.name] }));
    block.defer(() => config.remove());
    await startGuard(testbed, config.path);
  });

  void test("reports ready and healthy", async () => {
    const ready = await http(block.testbed, "/readyz");
    assert.deepEqual(ready, { status: 200, body: "ok\n" });
    const healthy = await http(block.testbed, "/healthz");
    assert.deepEqual(healthy, { status: 200, body: "ok\n" });
  });

  void test("the allowed user gets through and another uid is refused at once: TCP, UDP, both families", async () => {
    for (const family of FAMILIES) {
      for (const protocol of ["tcp", "udp"] as const) {
        await assertAllowed(block.testbed, trusted, family, protocol);
        await assertRefused(block.testbed, refused, family, protocol);
      }
    }
  });

  void test("/metrics describes the state", async () => {
    const metrics = await scrape(block.testbed);
    assert.equal(metrics.value("imds_guard_ready"), 1);
    assert.equal(metrics.value(RELOAD_OK), 1);
    assert.equal(metrics.value("imds_guard_monitor_up"), 1);
    assert.deepEqual(metrics.samples("imds_guard_backend_info", { backend: "nft" }), [1]);
    for (const family of FAMILIES) {
      const [rules = 0] = metrics.samples("imds_guard_rules", { family });
      assert.ok(rules > 0, `imds_guard_rules{family="${family}"} is ${rules}`);
    }
  });

  void test("/metrics passes promtool check metrics", async () => {
    const metrics = await scrape(block.testbed);
    const lint = await execa("promtool", ["check", "metrics"], {
      input: metrics.text,
      reject: false,
    });
    assert.equal(`${lint.stdout}${lint.stderr}`.trim(), "", "promtool found problems");
    assert.equal(lint.exitCode, 0);
  });

  void test("/status reports both families and the daemon's facts", async () => {
    const reply = await http(block.testbed, "/status");
    assert.equal(reply.status, 200);
    const status = JSON.parse(reply.body) as {
      inSync?: boolean;
      families?: Record<string, { installed?: boolean; inSync?: boolean; jumps?: unknown[] }>;
      daemon?: { configDigest?: unknown; lastReconcileAt?: unknown; ready?: unknown };
    };
    assert.equal(status.inSync, true, reply.body);
    for (const family of FAMILIES) {
      const facts = status.families?.[family];
      assert.equal(facts?.installed, true, `${family}: ${reply.body}`);
      assert.equal(facts.inSync, true, `${family}: ${reply.body}`);
      assert.equal(facts.jumps?.length, 2, `${family}: ${reply.body}`);
    }
    const digest = createHash("sha256")
      .update(await readFile(config.path))
      .digest("hex");
    assert.equal(status.daemon?.configDigest, digest, "configDigest is the file's sha256");
    assert.equal(status.daemon.ready, true);
    const lastReconcile = Date.parse(String(status.daemon.lastReconcileAt));
    assert.ok(
      Number.isFinite(lastReconcile),
      `lastReconcileAt: ${String(status.daemon.lastReconcileAt)}`,
    );
    assert.ok(Math.abs(Date.now() - lastReconcile) < 60_000, "lastReconcileAt is recent");
  });

  void test("the endpoints are read-only: POST and DELETE get 405", async () => {
    assert.equal((await http(block.testbed, "/metrics", "POST")).status, 405);
    assert.equal((await http(block.testbed, "/status", "DELETE")).status, 405);
  });
});

void describe("systemd notify", () => {
  const block = blockTestbed();
  let refused: TestUser;
  let daemon: SpawnedProcess;
  let messages: () => Promise<NotifyMessage[]>;

  /** Index of the first message at or after `from` that has KEY=value. */
  const indexOf = (list: NotifyMessage[], key: string, value: string, from = 0): number =>
    list.findIndex((message, index) => index >= from && message.get(key) === value);

  before(async () => {
    const { testbed } = block;
    const trusted = await testbed.createUser("trusted");
    refused = await testbed.createUser("refused");
    const config = await guardConfig(allowYaml({ users: [trusted.name] }));
    block.defer(() => config.remove());
    const listener = await startNotifyListener(testbed.prefix);
    block.defer(() => listener.close());
    messages = () => listener.messages();
    daemon = await startGuard(testbed, config.path, {
      NOTIFY_SOCKET: listener.socketPath,
      WATCHDOG_USEC: "2000000",
    });
  });

  void test("READY=1 arrives with a STATUS line", async () => {
    const ready = await until(
      "READY=1",
      async () => (await messages()).find((message) => message.get("READY") === "1"),
      REACT_MS,
    );
    assert.match(ready.get("STATUS") ?? "", /in sync/);
  });

  void test("WATCHDOG=1 keeps arriving while the daemon is healthy", async () => {
    const count = async (): Promise<number> =>
      (await messages()).filter((message) => message.get("WATCHDOG") === "1").length;
    const start = await count();
    await until(
      "two more WATCHDOG=1",
      async () => ((await count()) >= start + 2 ? true : undefined),
      REACT_MS,
    );
  });

  void test("SIGHUP: RELOADING=1, then READY=1 once the reload is done", async () => {
    const from = (await messages()).length;
    process.kill(daemon.pid, "SIGHUP");
    const list = await until(
      "RELOADING=1 then READY=1",
      async () => {
        const all = await messages();
        const reloading = indexOf(all, "RELOADING", "1", from);
        return reloading >= 0 && indexOf(all, "READY", "1", reloading + 1) > reloading
          ? all
          : undefined;
      },
      REACT_MS,
    );
    const reloading = list[indexOf(list, "RELOADING", "1", from)];
    assert.match(reloading?.get("MONOTONIC_USEC") ?? "", /^\d+$/);
  });

  void test("SIGTERM: STOPPING=1 and exit 0 within 5 s", async () => {
    const from = (await messages()).length;
    process.kill(daemon.pid, "SIGTERM");
    const exit = await Promise.race([daemon.exited, sleep(5000, undefined)]);
    assert.ok(exit !== undefined, `still running 5 s after SIGTERM:\n${daemon.output()}`);
    assert.equal(exit.exitCode, 0, daemon.output());
    const all = await until(
      "STOPPING=1",
      async () => {
        const list = await messages();
        return indexOf(list, "STOPPING", "1", from) >= 0 ? list : undefined;
      },
      REACT_MS,
    );
    assert.equal(indexOf(all, "READY", "1", indexOf(all, "STOPPING", "1", from)), -1);
  });

  void test("the rules stay in force after the daemon stopped", async () => {
    for (const family of FAMILIES) await assertRefused(block.testbed, refused, family);
    assert.equal(ourJumps(await saved(block.testbed, "ipv4")).length, 2);
  });
});

interface DriftCase {
  readonly name: string;
  readonly act: (testbed: Testbed) => Promise<void>;
  /** Drift the daemon must report, as [family, reason]. */
  readonly reasons: readonly (readonly [Family, string])[];
  readonly check?: (testbed: Testbed) => Promise<void>;
}

const DRIFT_CASES: readonly DriftCase[] = [
  {
    name: "a flushed IMDS-GUARD chain is refilled",
    act: (testbed) => iptablesIn(testbed, ["iptables-nft", "-F", "IMDS-GUARD"]),
    reasons: [["ipv4", "chain_mismatch"]],
  },
  {
    name: "a deleted jump is put back",
    act: (testbed) => iptablesIn(testbed, ["iptables-nft", "-D", "OUTPUT", "1"]),
    reasons: [["ipv4", "missing_jump"]],
  },
  {
    name: "a foreign ACCEPT above our jumps: ours move back to 1-2, theirs is kept",
    act: (testbed) => iptablesIn(testbed, ["iptables-nft", "-I", "OUTPUT", "1", "-j", "ACCEPT"]),
    reasons: [["ipv4", "displaced_jump"]],
    check: async (testbed) => {
      const listed = await testbed.exec(["iptables-nft", "-S", "OUTPUT"]);
      const rules = listed.stdout.split("\n").filter((line) => line.startsWith("-A OUTPUT"));
      assert.equal(rules.length, 3, listed.stdout);
      assert.ok(
        rules.slice(0, 2).every((rule) => rule.includes('"imds-guard:')),
        listed.stdout,
      );
      assert.equal(rules[2], "-A OUTPUT -j ACCEPT");
      await iptablesIn(testbed, ["iptables-nft", "-D", "OUTPUT", "-j", "ACCEPT"]);
    },
  },
  {
    name: "IMDS-GUARD-REFUSE rewritten to ACCEPT is restored",
    act: (testbed) =>
      restoreIn(
        testbed,
        "ipv4",
        "*filter\n-F IMDS-GUARD-REFUSE\n-A IMDS-GUARD-REFUSE -j ACCEPT\nCOMMIT\n",
      ),
    reasons: [["ipv4", "chain_mismatch"]],
  },
  {
    name: "a deleted IMDS-GUARD chain and its jumps are recreated",
    act: (testbed) =>
      restoreIn(
        testbed,
        "ipv4",
        "*filter\n-D OUTPUT 1\n-D OUTPUT 1\n-F IMDS-GUARD\n-X IMDS-GUARD\nCOMMIT\n",
      ),
    reasons: [
      ["ipv4", "missing_chain"],
      ["ipv4", "missing_jump"],
    ],
  },
  {
    name: "nft flush ruleset: everything is reinstalled in both families",
    act: (testbed) => iptablesIn(testbed, ["nft", "flush", "ruleset"]),
    reasons: [
      ["ipv4", "missing_chain"],
      ["ipv4", "missing_jump"],
      ["ipv6", "missing_chain"],
      ["ipv6", "missing_jump"],
    ],
  },
  {
    name: "a flushed IPv6 IMDS-GUARD chain is refilled",
    act: (testbed) => iptablesIn(testbed, ["ip6tables-nft", "-F", "IMDS-GUARD"]),
    reasons: [["ipv6", "chain_mismatch"]],
  },
];

void describe("drift repair", () => {
  const block = blockTestbed();
  let trusted: TestUser;
  let refused: TestUser;

  before(async () => {
    const { testbed } = block;
    trusted = await testbed.createUser("trusted");
    refused = await testbed.createUser("refused");
    const config = await guardConfig(allowYaml({ users: [trusted.name] }));
    block.defer(() => config.remove());
    await startGuard(testbed, config.path);
  });

  for (const drift of DRIFT_CASES) {
    void test(drift.name, async () => {
      const { testbed } = block;
      const start = await scrape(testbed);
      const reasonCount = (metrics: Metrics, [family, reason]: readonly [Family, string]) =>
        metrics.sum(DRIFT, { family, reason });
      await drift.act(testbed);
      await waitForMetrics(
        testbed,
        `a repair reporting ${drift.reasons.map((r) => r.join(" ")).join(", ")}`,
        (metrics) =>
          metrics.value(REPAIR_COUNT) > start.value(REPAIR_COUNT) &&
          drift.reasons.every(
            (reason) => reasonCount(metrics, reason) > reasonCount(start, reason),
          ),
      );
      await until(
        "/status to say in sync",
        async () => {
          const status = JSON.parse((await http(testbed, "/status")).body) as { inSync?: boolean };
          return status.inSync === true ? true : undefined;
        },
        REACT_MS,
      );
      await drift.check?.(testbed);
      for (const family of FAMILIES) assert.equal(ourJumps(await saved(testbed, family)).length, 2);
      await assertEnforced(testbed, [trusted], [refused]);
    });
  }
});

void describe("identity changes", () => {
  const block = blockTestbed();
  let readers: TestGroup;
  let member: TestUser;
  let outsider: TestUser;
  let daemon: SpawnedProcess;

  before(async () => {
    const { testbed } = block;
    readers = await testbed.createGroup("readers");
    member = await testbed.createUser("member", { groups: [readers.name] });
    outsider = await testbed.createUser("outsider");
    const config = await guardConfig(allowYaml({ groups: [readers.name] }));
    block.defer(() => config.remove());
    daemon = await startGuard(testbed, config.path);
  });

  void test("a group member is allowed and a non-member refused", async () => {
    await assertEnforced(block.testbed, [member, uidOnly(member)], [outsider]);
  });

  void test("usermod -aG: the new member's uid is allowed without a restart", async () => {
    await shadowTool(["usermod", "-aG", readers.name, outsider.name]);
    await waitForSave(block.testbed, `a RETURN for uid ${outsider.uid}`, (save) =>
      returnsForUid(save, outsider.uid),
    );
    // Without the group in the process's own list: only the uid rule can let it through.
    for (const family of FAMILIES) await assertAllowed(block.testbed, uidOnly(outsider), family);
  });

  void test("gpasswd -d: the removed member is refused again", async () => {
    await shadowTool(["gpasswd", "-d", outsider.name, readers.name]);
    await waitForSave(
      block.testbed,
      `no RETURN for uid ${outsider.uid}`,
      (save) => !returnsForUid(save, outsider.uid),
    );
    for (const family of FAMILIES) await assertRefused(block.testbed, uidOnly(outsider), family);
  });

  void test("groupdel: former members are refused and the unresolved group is logged", async () => {
    await shadowTool(["groupdel", readers.name]);
    await waitForSave(
      block.testbed,
      `no RETURN for uid ${member.uid}`,
      (save) => !returnsForUid(save, member.uid) && !save.includes(`--gid-owner ${readers.gid} `),
    );
    // Also with the stale gid still in the process's group list.
    await assertEnforced(block.testbed, [], [uidOnly(member), member]);
    const warning = await daemon.waitForOutput(
      `group \\"${readers.name}\\" is not known to NSS`,
      REACT_MS,
    );
    assert.match(warning, /"level":40/);
  });
});

void describe("config changes", () => {
  const block = blockTestbed();
  let alpha: TestUser;
  let beta: TestUser;
  let daemon: SpawnedProcess;
  let config: GuardConfig;

  const applied = (allowed: TestUser, refused: TestUser): Promise<string> =>
    waitForSave(
      block.testbed,
      `uid ${allowed.uid} allowed and ${refused.uid} not`,
      (save) => returnsForUid(save, allowed.uid) && !returnsForUid(save, refused.uid),
    );
  const reloadOk = (value: 0 | 1): Promise<Metrics> =>
    waitForMetrics(block.testbed, `${RELOAD_OK} ${value}`, (m) => m.value(RELOAD_OK) === value);

  before(async () => {
    const { testbed } = block;
    alpha = await testbed.createUser("alpha");
    beta = await testbed.createUser("beta");
    config = await guardConfig(allowYaml({ users: [alpha.name] }));
    block.defer(() => config.remove());
    daemon = await startGuard(testbed, config.path);
  });

  void test("a valid edit written by rename is applied without a restart", async () => {
    await config.replace(allowYaml({ users: [beta.name] }));
    await applied(beta, alpha);
    await assertEnforced(block.testbed, [beta], [alpha]);
    assert.ok(isAlive(daemon.pid), "the same daemon process applied it");
    await daemon.waitForOutput('"msg":"config reloaded"', REACT_MS);
  });

  void test("a valid edit written in place is applied too", async () => {
    await config.overwrite(allowYaml({ users: [alpha.name] }));
    await applied(alpha, beta);
    await assertEnforced(block.testbed, [alpha], [beta]);
  });

  void test("an invalid edit keeps the last good policy and says where the problem is", async () => {
    const { yaml, line } = typoYaml({ users: [beta.name] });
    await config.overwrite(yaml);
    await reloadOk(0);
    const logged = await daemon.waitForOutput(
      `${config.path}:${line}:1: mdoe: unknown key`,
      REACT_MS,
    );
    assert.match(logged, /config rejected; the last good policy stays in force/);
    await assertEnforced(block.testbed, [alpha], [beta]);
    const status = JSON.parse((await http(block.testbed, "/status")).body) as {
      daemon?: { configError?: unknown };
    };
    assert.match(String(status.daemon?.configError), new RegExp(`:${line}:1: mdoe`));
  });

  void test("fixing the file applies it and the reload metric returns to 1", async () => {
    await config.replace(allowYaml({ users: [beta.name] }));
    await reloadOk(1);
    await applied(beta, alpha);
    await assertEnforced(block.testbed, [beta], [alpha]);
  });

  void test("deleting the config file keeps the last good policy in force", async () => {
    await rm(config.path);
    await reloadOk(0);
    await daemon.waitForOutput("IMDSG_CONFIG_UNREADABLE", REACT_MS);
    await assertEnforced(block.testbed, [beta], [alpha]);
  });

  void test("a config file re-created after a deletion is noticed", async () => {
    await config.overwrite(allowYaml({ users: [alpha.name] }));
    await reloadOk(1);
    await applied(alpha, beta);
  });
});

void describe("crash and adoption", () => {
  const block = blockTestbed();
  let trusted: TestUser;
  let refused: TestUser;
  let configPath: string;

  before(async () => {
    const { testbed } = block;
    trusted = await testbed.createUser("trusted");
    refused = await testbed.createUser("refused");
    const config = await guardConfig(allowYaml({ users: [trusted.name] }));
    block.defer(() => config.remove());
    configPath = config.path;
  });

  void test("after kill -9 of the daemon the rules still enforce", async () => {
    const daemon = await startGuard(block.testbed, configPath);
    process.kill(daemon.pid, "SIGKILL");
    const exit = await daemon.exited;
    assert.equal(exit.signal, "SIGKILL");
    await assertEnforced(block.testbed, [trusted], [refused]);
  });

  void test("a new daemon adopts the rules without rewriting or duplicating them", async () => {
    const daemon = await startGuard(block.testbed, configPath);
    // A few polls later, still nothing written.
    const metrics = await waitForMetrics(
      block.testbed,
      "three unchanged reconciles",
      (m) => m.sum(RECONCILES, { result: "unchanged" }) >= 3,
    );
    assert.equal(metrics.sum(RECONCILES, { result: "changed" }), 0, metrics.text);
    assert.equal(metrics.value(REPAIR_COUNT), 0);
    assert.doesNotMatch(daemon.output(), /policy applied/);
    for (const family of FAMILIES) {
      const jumps = ourJumps(await saved(block.testbed, family));
      assert.equal(jumps.length, 2, `${family}:\n${jumps.join("\n")}`);
    }
    await assertEnforced(block.testbed, [trusted], [refused]);
  });
});

void describe("no gap for a refused uid", () => {
  const block = blockTestbed();

  void test("a continuous prober sees no 200 through a restart and three reloads", async (t) => {
    const { testbed } = block;
    const trusted = await testbed.createUser("trusted");
    const other = await testbed.createUser("other");
    const refused = await testbed.createUser("refused");
    const config = await guardConfig(allowYaml({ users: [trusted.name] }));
    block.defer(() => config.remove());
    let daemon = await startGuard(testbed, config.path);

    const probers = await Promise.all([
      testbed.startProber({ user: refused, family: "ipv4", intervalMs: 20, timeoutMs: 250 }),
      testbed.startProber({
        user: refused,
        family: "ipv6",
        protocol: "udp",
        intervalMs: 20,
        timeoutMs: 250,
      }),
    ]);
    const counts: ProberCounts[] = [];
    try {
      process.kill(daemon.pid, "SIGTERM");
      assert.equal((await daemon.exited).exitCode, 0, daemon.output());
      daemon = await startGuard(testbed, config.path);

      await config.replace(allowYaml({ users: [trusted.name, other.name] }));
      await waitForSave(testbed, `a RETURN for uid ${other.uid}`, (save) =>
        returnsForUid(save, other.uid),
      );
      await config.overwrite(typoYaml({ users: [other.name] }).yaml);
      await waitForMetrics(testbed, `${RELOAD_OK} 0`, (m) => m.value(RELOAD_OK) === 0);
      await config.replace(allowYaml({ users: [trusted.name] }));
      await waitForMetrics(testbed, `${RELOAD_OK} 1`, (m) => m.value(RELOAD_OK) === 1);
      await waitForSave(
        testbed,
        `no RETURN for uid ${other.uid}`,
        (save) => !returnsForUid(save, other.uid),
      );
    } finally {
      for (const prober of probers) counts.push(await prober.stop());
    }
    t.diagnostic(`TCP/IPv4 and UDP/IPv6 probers: ${JSON.stringify(counts)}`);
    for (const [index, count] of counts.entries()) {
      const attempts = count[200] + count.refused + count.timeout + count.error;
      assert.equal(count[200], 0, `prober ${index}: ${JSON.stringify(count)}`);
      assert.ok(attempts >= 10, `prober ${index} made only ${attempts} attempts`);
    }
    await assertEnforced(testbed, [trusted], [refused]);
  });
});

void describe("legacy flavour", () => {
  const block = blockTestbed();
  let trusted: TestUser;
  let refused: TestUser;
  let daemon: SpawnedProcess;

  before(async () => {
    const { testbed } = block;
    trusted = await testbed.createUser("trusted");
    refused = await testbed.createUser("refused");
    const config = await guardConfig(allowYaml({ users: [trusted.name] }, ["backend: legacy"]));
    block.defer(() => config.remove());
    daemon = await startGuard(testbed, config.path);
  });

  void test("enforces through iptables-legacy without the nft monitor", async () => {
    const { testbed } = block;
    for (const family of FAMILIES) {
      assert.equal(ourJumps(await saved(testbed, family, "legacy")).length, 2, family);
      assert.equal(ourJumps(await saved(testbed, family, "nft")).length, 0, family);
    }
    const metrics = await scrape(testbed);
    assert.equal(metrics.value("imds_guard_monitor_up"), 0);
    assert.deepEqual(metrics.samples("imds_guard_backend_info", { backend: "legacy" }), [1]);
    await assertEnforced(testbed, [trusted], [refused]);
  });

  void test("a flushed chain is found by the periodic poll and repaired", async () => {
    const { testbed } = block;
    const labels = { family: "ipv4", reason: "chain_mismatch", trigger: "poll" };
    await clearOfPostwriteChecks(daemon);
    const start = await scrape(testbed);
    await iptablesIn(testbed, ["iptables-legacy", "-F", "IMDS-GUARD"]);
    await waitForMetrics(
      testbed,
      "a repair found by the poll",
      (m) =>
        m.sum(DRIFT, labels) > start.sum(DRIFT, labels) &&
        m.value(REPAIR_COUNT) > start.value(REPAIR_COUNT),
    );
    await assertEnforced(testbed, [trusted], [refused]);
  });
});
