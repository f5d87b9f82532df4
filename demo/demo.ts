// The demo: the real imds-guard daemon guarding a fake metadata service inside a throwaway
// testbed (two network namespaces, real users and a group), narrated from real results only.
// It must never touch the host namespace's firewall or routes (it only reads the host's
// iptables-save, to show that), and it removes everything it created, also on SIGINT/SIGTERM.
//
// usage (as root, after `npm run build`): node --import tsx demo/demo.ts   (or scripts/demo)

import { existsSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { execa } from "execa";
import {
  createTestbed,
  type ConnectOutcome,
  type Family,
  type ProbeUser,
  type Testbed,
  type TestGroup,
  type TestUser,
} from "../test/integration/harness/index.js";
import { principalName } from "../test/integration/harness/names.js";
import { CLI, makeConfigDir, startDaemon } from "../test/integration/support.js";
import { DaemonLog, type LogLine } from "./daemon-log.js";
import { changedDumps, readHostFirewall, type HostFirewall } from "./host-firewall.js";
import {
  describe as describeCreated,
  inventory,
  isEmpty,
  nothingCreated,
  retryRemoval,
} from "./leftovers.js";
import { excerpt, fetchInInstance, parseSamples, total, type Sample } from "./metrics.js";
import { Narrator, connectionLine, endpoint, formatMs } from "./narrator.js";

const FAMILIES: readonly Family[] = ["ipv4", "ipv6"];
const CHAIN = "IMDS-GUARD";
const LISTEN = "127.0.0.1:9877";
const READY_TIMEOUT_MS = 20_000;
const REPAIR_TIMEOUT_MS = 10_000;
const PICKUP_TIMEOUT_MS = 15_000;
/** After an interrupt, how long the story may take to notice before clean-up goes ahead. */
const STORY_SETTLE_MS = 20_000;
const EXIT_FOR: Record<"SIGINT" | "SIGTERM", number> = { SIGINT: 130, SIGTERM: 143 };

/** Something the demo counts on did not happen; the story cannot sensibly go on. */
class Unexpected extends Error {}
/** A signal arrived: the story stops at the next step and leaves the rest to the clean-up. */
class Interrupted extends Error {}

const started = performance.now();
const narrator = new Narrator();
const created = nothingCreated();
let testbedCreation: Promise<Testbed> | undefined;
let configDir: Awaited<ReturnType<typeof makeConfigDir>> | undefined;
let hostBefore: HostFirewall | undefined;
let interruptedBy: "SIGINT" | "SIGTERM" | undefined;
let shutdown: Promise<never> | undefined;
/** Connections this demo made while the guard was up, by family: what /metrics should count. */
const caused: Record<Family, { refused: number; allowed: number }> = {
  ipv4: { refused: 0, allowed: 0 },
  ipv6: { refused: 0, allowed: 0 },
};
let guarded = false;
/** When the last of those connections ended, in epoch seconds like the daemon's timestamps. */
let lastProbeAt = 0;

function mark(ok: boolean): string {
  return ok ? "✔" : "✘";
}

/** How the daemon's trigger labels read in a sentence. */
const FOUND_BY: Record<string, string> = {
  event: "the kernel ruleset monitor (nft monitor)",
  poll: "the periodic drift check",
  postwrite: "a post-write re-check",
  file: "a file or NSS change",
};

function elapsed(since: number): string {
  return formatMs(performance.now() - since);
}

/** Called before anything that creates something, so nothing is created after an interrupt. */
function notInterrupted(): void {
  if (interruptedBy !== undefined) throw new Interrupted(interruptedBy);
}

async function story(): Promise<void> {
  narrator.line(
    "imds-guard demo: the real daemon guards a fake metadata service in throwaway network namespaces.",
  );
  narrator.line("Every line below reports what just happened; nothing is canned.");
  if (!existsSync(CLI)) throw new Unexpected(`${CLI} is missing: run \`npm run build\` first`);
  hostBefore = await readHostFirewall();

  // 1. The testbed, the accounts and the config.
  narrator.section(1, "A throwaway cloud VM");
  notInterrupted();
  testbedCreation = createTestbed();
  const testbed = await testbedCreation;
  created.namespaces.push(testbed.instanceNs, testbed.metadataNs);
  created.dirs.push(testbed.scriptDir);
  created.processes.set("fake metadata server", testbed.serverPid);
  narrator.line(
    `  testbed ${testbed.prefix}: instance namespace ${testbed.instanceNs} ⇄ metadata namespace ${testbed.metadataNs}`,
  );
  narrator.line(
    `  fake metadata service (pid ${String(testbed.serverPid)}) answers on ${testbed.targets.ipv4} and ${testbed.targets.ipv6}`,
  );
  const hex = testbed.prefix.slice("imdsg-".length);
  const user = async (short: string): Promise<TestUser> => {
    notInterrupted();
    created.users.push(principalName(hex, short));
    return testbed.createUser(short);
  };
  notInterrupted();
  created.groups.push(principalName(hex, "imds-readers"));
  const readers: TestGroup = await testbed.createGroup("imds-readers");
  const trusty = await user("trusty");
  const apache = await user("apache");
  const newhire = await user("newhire");
  for (const [label, account] of [
    ["trusty", trusty],
    ["apache", apache],
    ["newhire", newhire],
  ] as const) {
    narrator.line(`  user ${label}: ${account.name} (uid ${String(account.uid)})`);
  }
  narrator.line(`  group imds-readers: ${readers.name} (gid ${String(readers.gid)}, no members)`);

  await contrast(testbed, apache);

  notInterrupted();
  configDir = await makeConfigDir();
  created.dirs.push(configDir.dir);
  const yaml = [
    "mode: enforce",
    "allow:",
    `  users: [root, ${trusty.name}]`,
    `  groups: [${readers.name}]`,
    'targets: [169.254.169.254, "fd00:ec2::254"]',
    "drift_check_interval: 1s",
    `listen: ${LISTEN}`,
  ];
  const configPath = await configDir.write("config.yaml", `${yaml.join("\n")}\n`);
  narrator.line(`  config ${configPath}:`);
  for (const line of yaml) narrator.line(`    | ${line}`);

  // 2. The daemon.
  narrator.section(2, "The guard daemon");
  notInterrupted();
  const spawnedAt = performance.now();
  const daemon = await startDaemon(testbed, configPath);
  created.processes.set("daemon", daemon.pid);
  const log = new DaemonLog(daemon);
  let daemonExited = false;
  void daemon.exited.then(() => {
    daemonExited = true;
  });
  const exited = (): boolean => daemonExited || interruptedBy !== undefined;
  const ready = await log.waitFor((l) => l.msg === "ready", 0, READY_TIMEOUT_MS, exited);
  notInterrupted();
  if (ready === undefined) {
    throw new Unexpected(
      `the daemon did not log "ready" within ${String(READY_TIMEOUT_MS)} ms:\n${log.tail()}`,
    );
  }
  const readyAfter = elapsed(spawnedAt);
  guarded = true;
  const serving = await log.waitFor((l) => l.msg.startsWith("serving"), 0, 5_000, exited);
  const backend = log.lines().find((l) => l.msg === "iptables backend chosen");
  const flavour = backend?.backend === "legacy" ? "legacy" : "nft";
  narrator.check(
    true,
    `  ✔ daemon ready after ${readyAfter} ms (\`imds-guard run\`, pid ${String(daemon.pid)}, in ${testbed.instanceNs})`,
    "",
  );
  narrator.line(`    its status: ${String(ready.status)}`);
  narrator.line(
    `    backend: iptables-${String(backend?.backend)} (${String(backend?.reason)}); families: ${Array.isArray(backend?.families) ? backend.families.map(String).join(", ") : "?"}`,
  );
  const readyz = await fetchInInstance(testbed, `http://${LISTEN}/readyz`);
  narrator.check(
    serving !== undefined && readyz.ok && readyz.body.trim() === "ok",
    `  ${mark(readyz.ok)} GET /readyz inside the namespace: ${readyz.body.trim()}`,
    `/readyz did not answer ok: ${readyz.body.trim()}`,
  );

  // 3. Who gets through.
  narrator.section(3, "Who reaches the metadata service");
  for (const [label, account, expected] of [
    ["trusty", trusty, "200"],
    ["apache", apache, "refused"],
  ] as const) {
    for (const family of FAMILIES) {
      expectOutcome(await probe(testbed, label, account, family), account, expected);
    }
  }

  // 4. Drift.
  narrator.section(4, "Someone flushes the chain");
  const flush = [`iptables-${flavour}`, "-F", CHAIN];
  const beforeFlush = log.mark();
  narrator.line(`  # ${flush.join(" ")}        (as root, inside ${testbed.instanceNs})`);
  const flushed = await testbed.exec(flush);
  narrator.check(
    flushed.exitCode === 0,
    `  ${mark(flushed.exitCode === 0)} flushed (exit ${String(flushed.exitCode)})`,
    `${flush.join(" ")} failed: ${flushed.stderr}`,
  );
  const repair = await log.waitFor(
    (l) => l.msg.startsWith("drift repaired"),
    beforeFlush,
    REPAIR_TIMEOUT_MS,
    exited,
  );
  notInterrupted();
  if (repair === undefined) {
    throw new Unexpected(
      `no "drift repaired" within ${String(REPAIR_TIMEOUT_MS)} ms:\n${log.tail()}`,
    );
  }
  const reasons = Array.isArray(repair.reasons) ? repair.reasons.map(String).join(", ") : "?";
  const trigger = String(repair.trigger);
  const measured = typeof repair.repairMs === "number";
  narrator.check(
    measured,
    `  ${mark(measured)} imds-guard repaired ${String(repair.family)} in ${String(repair.repairMs)} ms (repairMs from its log)`,
    `the repair line carries no repairMs: ${JSON.stringify(repair)}`,
  );
  narrator.line(`    found by ${FOUND_BY[trigger] ?? trigger}; drift: ${reasons}`);
  expectOutcome(await probe(testbed, "apache", apache, "ipv4"), apache, "refused");
  expectOutcome(await probe(testbed, "trusty", trusty, "ipv4"), trusty, "200");

  // 5. Group membership changes.
  narrator.section(5, "A new hire joins imds-readers");
  // Only uid and gid, no supplementary groups: a process that was already running before the
  // usermod, so only the daemon's re-resolution of the group can let it in.
  const running: ProbeUser = { uid: newhire.uid, gid: newhire.gid };
  expectOutcome(await probe(testbed, "newhire", running, "ipv4"), running, "refused");
  const beforeUsermod = log.mark();
  notInterrupted();
  narrator.line(`  # usermod -aG ${readers.name} ${newhire.name}`);
  const usermod = await withLockRetry(["usermod", "-aG", readers.name, newhire.name]);
  const usermodDone = Date.now();
  if (usermod.exitCode !== 0) throw new Unexpected(`usermod failed: ${usermod.stderr}`);
  const applied = await appliedFor(log, beforeUsermod, exited);
  notInterrupted();
  const lastApplied = applied.reduce((latest, l) => Math.max(latest, l.time), 0);
  narrator.check(
    applied.length === FAMILIES.length,
    `  ${mark(applied.length === FAMILIES.length)} the daemon applied the new policy ${String(lastApplied - usermodDone)} ms after usermod returned (${applied.map((l) => String(l.family)).join(", ")})`,
    `"policy applied" for both families did not arrive within ${String(PICKUP_TIMEOUT_MS)} ms (got ${String(applied.length)}):\n${log.tail()}`,
  );
  const rule = await ownerRule(testbed, flavour, newhire.uid);
  if (rule !== undefined) narrator.line(`    now in the chain: ${rule}`);
  for (const family of FAMILIES) {
    expectOutcome(await probe(testbed, "newhire", running, family), running, "200");
  }

  // 6. Metrics.
  narrator.section(6, "What the daemon exports");
  await showMetrics(testbed);
  guarded = false;

  // 7. Stop.
  narrator.section(7, "Stop and clean up");
  const stopping = performance.now();
  const stopped = await daemon.stop(5_000);
  narrator.check(
    stopped.exitCode === 0,
    `  ${mark(stopped.exitCode === 0)} daemon stopped on SIGTERM in ${elapsed(stopping)} ms (exit ${String(stopped.exitCode ?? stopped.signal)})`,
    `the daemon did not exit 0 on SIGTERM: ${String(stopped.exitCode ?? stopped.signal)}\n${log.tail()}`,
  );
  const left = await countOurRules(testbed, flavour);
  const afterStop = await probe(testbed, "apache", apache, "ipv4");
  narrator.line(
    `    ${String(left)} imds-guard rules are still in force in ${testbed.instanceNs} (stopping never opens the door):`,
  );
  expectOutcome(afterStop, apache, "refused", "    ");
}

interface Probe {
  readonly label: string;
  readonly family: Family;
  readonly target: string;
  readonly outcome: ConnectOutcome;
}

async function probe(
  testbed: Testbed,
  label: string,
  user: ProbeUser,
  family: Family,
): Promise<Probe> {
  const outcome = await testbed.connect({ user, family });
  if (guarded && outcome.result === "refused") caused[family].refused += 1;
  if (guarded && outcome.result === "200") caused[family].allowed += 1;
  lastProbeAt = Date.now() / 1000;
  return { label, family, target: endpoint(testbed.targets[family], family), outcome };
}

function expectOutcome(
  p: Probe,
  user: ProbeUser,
  expected: "200" | "refused",
  indent = "  ",
): void {
  narrator.check(
    p.outcome.result === expected,
    indent + connectionLine(p.label, user, p.target, p.outcome).trimStart(),
    `${p.label} → ${p.target} should have been ${expected === "200" ? "answered 200" : "refused"}`,
  );
}

/** Before the daemon runs, apache gets through: it is the guard that will refuse it. */
async function contrast(testbed: Testbed, apache: TestUser): Promise<void> {
  narrator.line("  no guard yet:");
  // One at a time, here and below, so no probe's latency includes another one starting up.
  for (const family of FAMILIES) {
    expectOutcome(await probe(testbed, "apache", apache, family), apache, "200", "    ");
  }
}

/** usermod takes the passwd/group lock, which a concurrent test run may hold for a moment. */
async function withLockRetry(
  argv: readonly string[],
): Promise<{ exitCode: number | undefined; stderr: string }> {
  const [file = "", ...args] = argv;
  for (let attempt = 0; ; attempt += 1) {
    const result = await execa(file, args, { reject: false, timeout: 30_000 });
    if (result.exitCode === 0 || !/lock/i.test(result.stderr) || attempt >= 20) {
      return { exitCode: result.exitCode, stderr: result.stderr };
    }
    await sleep(100);
  }
}

/** The "policy applied" lines, one per family, that follow a membership change. */
async function appliedFor(log: DaemonLog, from: number, exited: () => boolean): Promise<LogLine[]> {
  const deadline = Date.now() + PICKUP_TIMEOUT_MS;
  for (;;) {
    const lines = log
      .lines()
      .slice(from)
      .filter((l) => l.msg === "policy applied");
    const families = new Set(lines.map((l) => l.family));
    if (FAMILIES.every((family) => families.has(family)) || exited() || Date.now() > deadline) {
      return FAMILIES.flatMap((family) => lines.filter((l) => l.family === family).slice(0, 1));
    }
    await sleep(10);
  }
}

async function saveIn(testbed: Testbed, flavour: string, family: Family): Promise<string> {
  const tool = family === "ipv4" ? "iptables" : "ip6tables";
  const result = await testbed.exec([`${tool}-${flavour}-save`, "-t", "filter"]);
  return result.stdout;
}

/** The rule that now lets the new hire's uid through, without its comment tag. */
async function ownerRule(
  testbed: Testbed,
  flavour: string,
  uid: number,
): Promise<string | undefined> {
  const saved = await saveIn(testbed, flavour, "ipv4");
  return saved
    .split("\n")
    .find((line) => line.startsWith(`-A ${CHAIN} `) && line.includes(`--uid-owner ${String(uid)} `))
    ?.replace(/ -m comment --comment "[^"]*"/, "");
}

async function countOurRules(testbed: Testbed, flavour: string): Promise<number> {
  let count = 0;
  for (const family of FAMILIES) {
    const saved = await saveIn(testbed, flavour, family);
    count += saved
      .split("\n")
      .filter((line) => line.startsWith("-A ") && line.includes(CHAIN)).length;
  }
  return count;
}

async function showMetrics(testbed: Testbed): Promise<void> {
  const url = `http://${LISTEN}/metrics`;
  const refusedCounted = (samples: readonly Sample[]): boolean =>
    FAMILIES.every(
      (f) => total(samples, "imds_guard_refused_packets_total", f) === caused[f].refused,
    );
  // The daemon reads the kernel's packet counters at each reconcile (a drift check every
  // second here): wait for one that ran after the last connection before quoting them.
  const readSince = lastProbeAt;
  let samples: Sample[] = [];
  let fetched = await fetchInInstance(testbed, url);
  const deadline = Date.now() + 5_000;
  for (;;) {
    samples = fetched.ok ? parseSamples(fetched.body) : [];
    // Finished a quarter second after: so it read the kernel after the connection (a
    // reconcile takes milliseconds).
    const fresh = total(samples, "imds_guard_last_reconcile_timestamp_seconds") > readSince + 0.25;
    if ((fresh && refusedCounted(samples)) || Date.now() > deadline) break;
    await sleep(200);
    fetched = await fetchInInstance(testbed, url);
  }
  narrator.line(`  # ${fetched.how}        (inside ${testbed.instanceNs}), excerpt:`);
  if (!fetched.ok) {
    narrator.fail(`could not fetch ${url}: ${fetched.body.trim()}`);
    return;
  }
  for (const sample of excerpt(samples)) narrator.line(`    ${sample.line}`);
  const made = FAMILIES.map(
    (f) => `${f}: ${String(caused[f].refused)} refused, ${String(caused[f].allowed)} allowed`,
  );
  narrator.line(`  this demo's connections while the guard ran: ${made.join("; ")}`);
  if (
    FAMILIES.some((f) => total(samples, "imds_guard_allowed_packets_total", f) < caused[f].allowed)
  ) {
    narrator.line(
      "  (allowed counts can be short: the flushed chain took its attempt counter with it, and what it had counted since the daemon's last read is lost)",
    );
  }
  const expectations: [boolean, string][] = [
    [total(samples, "imds_guard_ready") === 1, "imds_guard_ready is not 1"],
    [
      FAMILIES.every((f) => total(samples, "imds_guard_rules", f) > 0),
      "imds_guard_rules is 0 for a family",
    ],
    [
      total(samples, "imds_guard_drift_detected_total") >= 1,
      "the flush is missing from imds_guard_drift_detected_total",
    ],
    [
      total(samples, "imds_guard_drift_repair_duration_seconds_count") >= 1,
      "no repair in imds_guard_drift_repair_duration_seconds",
    ],
    [
      refusedCounted(samples),
      `imds_guard_refused_packets_total does not match the refusals this demo caused (${made.join("; ")})`,
    ],
    // Not exact: a flushed chain takes its attempt counter with it, so attempts made since the
    // daemon's last read of that counter cannot be known to anyone.
    [
      FAMILIES.every((f) => {
        const allowed = total(samples, "imds_guard_allowed_packets_total", f);
        return allowed > 0 && allowed <= caused[f].allowed;
      }),
      "imds_guard_allowed_packets_total is 0 or more than the connections this demo let through",
    ],
  ];
  const problems = expectations.filter(([ok]) => !ok).map(([, problem]) => problem);
  narrator.check(
    problems.length === 0,
    `  ${mark(problems.length === 0)} ready, rules in both families, the repair, and every refusal are counted`,
    problems.join("; "),
  );
}

/** Returns whether everything the demo created is verifiably gone. */
async function cleanUp(): Promise<boolean> {
  const testbed = await testbedCreation?.catch(() => undefined);
  if (testbed !== undefined) {
    await testbed.cleanup().catch((error: unknown) => {
      narrator.always(
        `  testbed clean-up reported: ${error instanceof Error ? error.message : String(error)}`,
      );
    });
  }
  await configDir?.remove();
  let checked = await inventory(created);
  if (!isEmpty(checked.remaining)) {
    await retryRemoval(checked.remaining);
    checked = await inventory(created);
  }
  if (!isEmpty(checked.removed)) {
    narrator.always("  removed, and checked gone (ip netns list, getent, the file system, /proc):");
    for (const line of describeCreated(checked.removed)) narrator.always(`    ${line}`);
  }
  if (!isEmpty(checked.remaining)) {
    narrator.always("  !! UNEXPECTED: still present after clean-up:");
    for (const line of describeCreated(checked.remaining)) narrator.always(`    ${line}`);
    narrator.fail("the clean-up left something behind (listed above)");
  }
  const hostAfter = await readHostFirewall();
  if (hostBefore === undefined) return isEmpty(checked.remaining);
  const changed = changedDumps(hostBefore, hostAfter);
  const ours = hostAfter.imdsLines.length;
  narrator.always(
    `  ${mark(ours === 0)} host namespace firewall (iptables-save and ip6tables-save, read only, before and after): ` +
      `${String(ours)} imds-guard rules, ${changed.length === 0 ? "unchanged" : `changed: ${changed.join(", ")}`}`,
  );
  if (ours > 0)
    narrator.fail(`imds-guard rules in the host namespace:\n${hostAfter.imdsLines.join("\n")}`);
  if (changed.length > 0 && ours === 0) {
    narrator.always(
      "    (the change holds no imds-guard rule; something else on this host changed its firewall meanwhile)",
    );
  }
  return isEmpty(checked.remaining);
}

/** Runs once, whoever asks first (the story's end, a failure or a signal), then exits. */
function finish(storyDone: Promise<unknown>): Promise<never> {
  shutdown ??= (async (): Promise<never> => {
    if (interruptedBy !== undefined) {
      narrator.always();
      narrator.always(`── ${interruptedBy}: interrupted; cleaning up`);
      // Whatever the story was doing must end first, or it could create something after the
      // clean-up. Most steps end at once; a testbed still being set up gives up only when its
      // own readiness wait (15 s) runs out.
      const settled = await Promise.race([storyDone.then(() => true), sleep(500, false)]);
      if (!settled) {
        narrator.always(
          "  waiting for the step in progress to give up (the testbed set-up can take up to 15 s)",
        );
        await Promise.race([storyDone, sleep(STORY_SETTLE_MS)]);
      }
    }
    const clean = await cleanUp();
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    narrator.always();
    if (interruptedBy !== undefined) {
      narrator.always(
        clean
          ? `interrupted by ${interruptedBy} after ${seconds} s; everything the demo created was removed`
          : `interrupted by ${interruptedBy} after ${seconds} s; NOT everything could be removed (see above)`,
      );
      process.exit(EXIT_FOR[interruptedBy]);
    }
    const problems = narrator.unexpected;
    if (problems.length === 0) {
      narrator.always(
        `✔ all ${String(narrator.checked)} expected outcomes happened, in ${seconds} s`,
      );
      process.exit(0);
    }
    narrator.always(`✘ ${String(problems.length)} unexpected outcome(s), in ${seconds} s:`);
    for (const problem of problems) narrator.always(`  - ${problem.split("\n")[0] ?? ""}`);
    process.exit(1);
  })();
  return shutdown;
}

function main(): void {
  let storyRun: Promise<void> = Promise.resolve();
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => {
      if (interruptedBy !== undefined) {
        narrator.always(`(${signal} again: still cleaning up, please wait)`);
        return;
      }
      interruptedBy = signal;
      narrator.silence();
      void finish(storyRun);
    });
  }
  storyRun = story().catch((error: unknown) => {
    if (!(error instanceof Interrupted) && interruptedBy === undefined) {
      narrator.fail(error instanceof Error ? error.message : String(error));
    }
  });
  void storyRun.then(() => finish(storyRun));
}

main();
