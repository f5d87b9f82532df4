// The packaged unit under a real systemd: systemd/imds-guard.service, unchanged but for
// ExecStart, boots in a debootstrapped Debian container (systemd-nspawn, its own network
// namespace) with the repository and the host's node bind-mounted read-only. Nothing here runs
// iptables or sends traffic outside that container; see support/machine.ts for how that is kept.
//
//   node --import tsx --test --test-timeout=900000 test/system/systemd.test.ts
//
// Needs root. The first run installs debootstrap/systemd-container if missing and builds the
// rootfs cache under /var/cache/imds-guard-test (about a minute); later runs reuse it.

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import {
  daemonLines,
  expectedPriority,
  managerMessages,
  unitJournal,
  type DaemonLine,
} from "./support/journal.js";
import { bootMachine, type Machine } from "./support/machine.js";
import { onExit } from "./support/exit-hook.js";
import { removeTreeSync } from "./support/safe-remove.js";
import {
  cachedRootfs,
  debianMirror,
  ensureHostTools,
  ensureRootfs,
  missingHostPackages,
  mirrorUnreachable,
  rootfsBuildInProgress,
  type Rootfs,
} from "./support/rootfs.js";

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const UNIT_FILE = join(REPO_ROOT, "systemd", "imds-guard.service");
const CLI = join(REPO_ROOT, "dist", "src", "cli", "main.js");
const NODE = "/usr/bin/node";
const UNIT = "imds-guard.service";
const IN_CONTAINER_REPO = "/opt/imds-guard";
const EXEC_START = `${NODE} ${IN_CONTAINER_REPO}/dist/src/cli/main.js run --config /etc/imds-guard/config.yaml`;

// root may reach the metadata service. The second name is never created, so the daemon logs a
// warning (PRIORITY=4) among its info lines (PRIORITY=6) on every start; it allows nobody.
const CONFIG = `# imds-guard system test
allow:
  users: [root, imdsg-sys-absent]
`;

/** The shipped unit, with only the path of the imds-guard binary pointed at the bind-mounted checkout. */
function unitForContainer(): string {
  const lines = readFileSync(UNIT_FILE, "utf8").split("\n");
  assert.equal(
    lines.filter((line) => line.startsWith("ExecStart=")).length,
    1,
    `${UNIT_FILE} should have exactly one ExecStart=`,
  );
  return lines
    .map((line) => (line.startsWith("ExecStart=") ? `ExecStart=${EXEC_START}` : line))
    .map((line) =>
      line.startsWith("ExecReload=")
        ? line.replace("/usr/bin/imds-guard ", `${NODE} ${IN_CONTAINER_REPO}/dist/src/cli/main.js `)
        : line,
    )
    .join("\n");
}

// Skipped only when the rootfs (or the tools to build it) must be fetched and the mirror cannot
// be reached at all; every other problem is a failure.
const mirror = debianMirror();
const needsMirror = cachedRootfs() === undefined || missingHostPackages().length > 0;
const unreachable = needsMirror ? await mirrorUnreachable(mirror) : undefined;
const skip =
  unreachable === undefined
    ? false
    : `debootstrap cannot reach the Debian mirror, so no container can be built: ${unreachable}`;

async function until<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs: number,
  everyMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${String(timeoutMs)} ms: ${what}`);
    await sleep(everyMs);
  }
}

void describe(
  "imds-guard.service under a real systemd (systemd-nspawn container)",
  { skip },
  () => {
    let machine: Machine | undefined;
    let rootfs: Rootfs | undefined;
    const timings: Record<string, number> = {};
    /** Our rules as first seen; every later sample must equal it. */
    let baseline: string[] = [];

    const vm = (): Machine => {
      assert.ok(machine, "the container did not boot (see the before hook's error)");
      return machine;
    };

    const show = async (props: readonly string[]): Promise<Record<string, string>> => {
      const out = await vm().mustExec(["systemctl", "show", `--property=${props.join(",")}`, UNIT]);
      const values: Record<string, string> = {};
      for (const line of out.split("\n")) {
        const eq = line.indexOf("=");
        if (eq > 0) values[line.slice(0, eq)] = line.slice(eq + 1);
      }
      return values;
    };

    /** Waits until systemd has restarted the unit exactly once more than in `first` and it runs again. */
    const restartedOnceMore = (
      first: Record<string, string>,
      what: string,
      timeoutMs: number,
      everyMs: number,
    ): Promise<Record<string, string>> =>
      until(
        what,
        async () => {
          const now = await show(["ActiveState", "SubState", "MainPID", "NRestarts"]);
          return now.ActiveState === "active" &&
            now.SubState === "running" &&
            now.MainPID !== first.MainPID &&
            now.NRestarts === String(Number(first.NRestarts) + 1)
            ? now
            : undefined;
        },
        timeoutMs,
        everyMs,
      );

    /** Our chains and tagged rules, both families, from iptables-nft in the container's netns. */
    const ourRules = async (): Promise<string[]> => {
      const out = await vm().mustExec(["sh", "-c", "iptables-save && ip6tables-save"]);
      return out
        .split("\n")
        .filter(
          (line) =>
            /^:IMDS-GUARD/.test(line) || (line.startsWith("-A ") && line.includes("imds-guard:")),
        )
        .map((line) => line.replace(/\[\d+:\d+\]/, "[0:0]"));
    };

    /** Samples the rules back to back while `action` runs; the rules must never differ. */
    const rulesThroughout = async (action: () => Promise<void>): Promise<number> => {
      const samples: string[][] = [];
      const sampling = { on: true };
      const sampler = (async () => {
        while (sampling.on) samples.push(await ourRules());
      })();
      try {
        await action();
      } finally {
        sampling.on = false;
        await sampler;
      }
      samples.push(await ourRules());
      samples.forEach((sample, i) => {
        assert.deepEqual(
          sample,
          baseline,
          `rules changed in sample ${String(i)} of ${String(samples.length)}`,
        );
      });
      return samples.length;
    };

    const daemonJournal = async (): Promise<DaemonLine[]> =>
      daemonLines(await unitJournal(vm(), UNIT));

    const journalTail = async (): Promise<string> =>
      (await vm().exec(["journalctl", "--unit", UNIT, "--no-pager", "--lines=40"])).stdout;

    before(
      async () => {
        assert.equal(process.getuid?.(), 0, "the system test boots containers: run it as root");
        assert.ok(existsSync(CLI), `${CLI} is missing: run \`npm run build\` first`);
        assert.ok(existsSync(NODE), `${NODE} is bind-mounted into the container and must exist`);
        // The debootstrap temp tree, should we die while building it (the machine registers its own).
        const unregister = onExit(() => {
          const tmp = rootfsBuildInProgress();
          if (tmp !== undefined) removeTreeSync(tmp);
        });
        try {
          let started = Date.now();
          const installed = await ensureHostTools();
          timings.hostToolsSeconds = (Date.now() - started) / 1000;
          if (installed.length > 0) timings.installedPackages = installed.length;
          started = Date.now();
          rootfs = await ensureRootfs(mirror);
          timings.rootfsSeconds = (Date.now() - started) / 1000;
        } finally {
          unregister();
        }
        const started = Date.now();
        machine = await bootMachine({
          rootfs: rootfs.path,
          dirs: [{ path: "/etc/imds-guard", mode: 0o700 }],
          files: [
            { path: `/etc/systemd/system/${UNIT}`, content: unitForContainer(), mode: 0o644 },
            {
              path: `/etc/systemd/system/multi-user.target.wants/${UNIT}`,
              symlinkTo: `/etc/systemd/system/${UNIT}`,
            },
            { path: "/etc/imds-guard/config.yaml", content: CONFIG, mode: 0o600 },
          ],
          bindReadOnly: [
            [NODE, NODE],
            [REPO_ROOT, IN_CONTAINER_REPO],
          ],
        });
        timings.bootSeconds = (Date.now() - started) / 1000;
      },
      { timeout: 1_500_000 },
    );

    after(async () => {
      await machine?.destroy();
    });

    void it("boots the container to running with the unit enabled and parsed without complaint", async (t) => {
      const stamp = rootfs?.stamp;
      t.diagnostic(
        `rootfs ${rootfs?.path ?? "?"} (${rootfs?.built === true ? "built now" : "cached"}; ` +
          `debootstrap took ${String(stamp?.buildSeconds)} s on ${stamp?.builtAt ?? "?"} from ${stamp?.mirror ?? "?"})`,
      );
      t.diagnostic(`timings: ${JSON.stringify(timings)}`);
      t.diagnostic(
        `machine ${vm().name}: nspawn PID ${String(vm().nspawnPid)}, init PID ${String(vm().initPid)}`,
      );
      if (vm().systemState === "degraded") {
        t.diagnostic(
          `degraded: ${(await vm().exec(["systemctl", "--failed", "--no-legend"])).stdout}`,
        );
      }
      assert.match(vm().systemState, /^(running|degraded)$/);
      assert.equal((await vm().exec(["systemctl", "is-enabled", UNIT])).stdout.trim(), "enabled");
      // Parse errors and ordering cycles are logged by PID 1 as "<unit file>:<line>: ..." or name us.
      const boot = await vm().mustExec([
        "journalctl",
        "--boot",
        "_PID=1",
        "--output=cat",
        "--no-pager",
      ]);
      const complaints = boot
        .split("\n")
        .filter(
          (line) =>
            /imds-guard\.service:\d+:/.test(line) ||
            (/cycle/i.test(line) && line.includes("imds-guard")),
        );
      assert.deepEqual(complaints, []);
    });

    void it("reaches active: READY=1 from systemd-notify gets through the sandbox (NotifyAccess=all)", async () => {
      const state = await show(["ActiveState", "SubState", "Type", "NotifyAccess", "MainPID"]);
      if (state.ActiveState !== "active")
        assert.fail(`unit is ${JSON.stringify(state)}; journal:\n${await journalTail()}`);
      assert.equal(state.SubState, "running");
      assert.equal(state.Type, "notify");
      assert.equal(state.NotifyAccess, "all");
      const manager = managerMessages(await unitJournal(vm(), UNIT)).map((e) => String(e.MESSAGE));
      assert.deepEqual(
        manager.filter((m) => /notification message|reception only permitted/i.test(m)),
        [],
        "systemd rejected notifications",
      );
      const failedNotify = (await daemonJournal()).filter((l) => l.msg === "sd_notify failed");
      assert.deepEqual(
        failedNotify.map((l) => l.entry.MESSAGE),
        [],
      );
    });

    void it("publishes the daemon's STATUS= line as the unit's StatusText", async () => {
      const { StatusText: status = "" } = await show(["StatusText"]);
      assert.match(status, /in sync/);
      assert.match(status, /enforce allow-list, 2 principal\(s\)/);
    });

    void it("installs the IMDS-GUARD chains and jumps with iptables-nft in the container's netns", async () => {
      const v4 = await vm().mustExec(["iptables-save"]);
      assert.match(v4, /^# Generated by iptables-save v[\d.]+ \(nf_tables\)/m);
      assert.match(v4, /^:IMDS-GUARD - /m);
      assert.match(v4, /^:IMDS-GUARD-REFUSE - /m);
      assert.match(v4, /^-A OUTPUT -d 169\.254\.169\.254\/32 .*-j IMDS-GUARD$/m);
      assert.match(v4, /^-A IMDS-GUARD -m owner --uid-owner 0 .*-j RETURN$/m);
      const v6 = await vm().mustExec(["ip6tables-save"]);
      assert.match(v6, /^-A OUTPUT -d fd00:ec2::254\/128 .*-j IMDS-GUARD$/m);
      baseline = await ourRules();
      assert.ok(baseline.length >= 10, `too few rules: ${baseline.join("\n")}`);
    });

    void it("answers /readyz on 127.0.0.1:9877 inside the container", async () => {
      const body = await until(
        "GET /readyz -> 200",
        async () => {
          const r = await vm().exec([
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--fail",
            "http://127.0.0.1:9877/readyz",
          ]);
          return r.exitCode === 0 ? r.stdout : undefined;
        },
        10_000,
      );
      assert.match(body, /^ok\b/);
    });

    void it("logs to the journal with the syslog priority of each line's level (<N> prefix)", async () => {
      const lines = await until(
        "a warning and an info line in the journal",
        async () => {
          const all = await daemonJournal();
          return all.some((l) => l.level === 40) && all.some((l) => l.level === 30)
            ? all
            : undefined;
        },
        10_000,
      );
      const warning = lines.find((l) => l.level === 40 && l.msg.includes("imdsg-sys-absent"));
      assert.ok(warning, "the unknown user's warning is missing");
      assert.equal(warning.entry.PRIORITY, "4");
      const info = lines.find((l) => l.level === 30 && l.msg === "ready");
      assert.ok(info, "the ready line is missing");
      assert.equal(info.entry.PRIORITY, "6");
      const wrong = lines.filter((l) => l.entry.PRIORITY !== expectedPriority(l.level));
      assert.deepEqual(
        wrong.map((l) => `${String(l.entry.PRIORITY)}: ${l.msg}`),
        [],
      );
    });

    void it("sends READY=1 only once /readyz is being served", async () => {
      const entries = await unitJournal(vm(), UNIT);
      const serving = daemonLines(entries).find((l) => l.msg.startsWith("serving "));
      assert.ok(serving, "no 'serving' line");
      const started = managerMessages(entries).find(
        (e) =>
          e.INVOCATION_ID === serving.invocation && String(e.MESSAGE).startsWith(`Started ${UNIT}`),
      );
      assert.ok(started, "no 'Started' message for the same invocation");
      assert.ok(
        serving.monotonicUsec <= BigInt(started.__MONOTONIC_TIMESTAMP ?? "0"),
        `READY=1 (Started, ${String(started.__MONOTONIC_TIMESTAMP)}) came before listening (${String(serving.monotonicUsec)})`,
      );
    });

    void it("is restarted by systemd after SIGKILL (Restart=always) with the rules in force throughout", async () => {
      const first = await show(["MainPID", "NRestarts"]);
      const samples = await rulesThroughout(async () => {
        await vm().mustExec(["systemctl", "kill", "--signal=SIGKILL", UNIT]);
        await restartedOnceMore(first, "restarted and active again", 20_000, 50);
      });
      // RestartSec=1 leaves the rules unguarded by any process for a second: sample it densely.
      assert.ok(samples >= 5, `only ${String(samples)} rule samples taken across the restart`);
      const manager = managerMessages(await unitJournal(vm(), UNIT)).map((e) => String(e.MESSAGE));
      assert.ok(
        manager.some((m) => m.includes("code=killed, status=9/KILL")),
        manager.join("\n"),
      );
    });

    /**
     * `systemctl reload`, then waits for the daemon's SIGHUP line, its READY=1 after it and the
     * unit active/running again. Returns the unit's state right after systemctl returned.
     */
    const reloadAndSettle = async (): Promise<{ rightAfter: string; seen: string[] }> => {
      const pid = Number((await show(["MainPID"])).MainPID);
      const hups = (lines: readonly DaemonLine[]) =>
        lines.filter((l) => l.pid === pid && l.msg.startsWith("SIGHUP: reloading")).length;
      const hupsBefore = hups(await daemonJournal());
      await vm().mustExec(["systemctl", "reload", UNIT]);
      const seen: string[] = [];
      await until(
        "the daemon's SIGHUP line, a new READY and the unit active/running",
        async () => {
          const now = await show(["ActiveState", "SubState"]);
          seen.push(`${now.ActiveState ?? "?"}/${now.SubState ?? "?"}`);
          const lines = (await daemonJournal()).filter((l) => l.pid === pid);
          const hup = lines.findLastIndex((l) => l.msg.startsWith("SIGHUP: reloading"));
          const readyAgain =
            hups(lines) > hupsBefore && lines.slice(hup).some((l) => l.msg === "ready");
          return readyAgain && now.ActiveState === "active" && now.SubState === "running"
            ? true
            : undefined;
        },
        15_000,
        20,
      );
      return { rightAfter: seen[0] ?? "?", seen: [...new Set(seen)] };
    };

    void it("reloads on `systemctl reload` (SIGHUP) and stays active in the same process", async (t) => {
      const first = await show(["MainPID", "NRestarts"]);
      const { seen } = await reloadAndSettle();
      t.diagnostic(`states seen after \`systemctl reload\` returned: ${seen.join(", ")}`);
      const after = await show(["MainPID", "NRestarts", "StatusText"]);
      assert.equal(after.MainPID, first.MainPID, "reload must not restart the daemon");
      assert.equal(after.NRestarts, first.NRestarts);
      assert.match(after.StatusText ?? "", /in sync/);
      assert.deepEqual(await ourRules(), baseline);
    });

    void it("`systemctl reload` returns only once the daemon has reloaded", async () => {
      const { rightAfter } = await reloadAndSettle();
      assert.equal(rightAfter, "active/running");
    });

    void it("is killed and restarted by the watchdog (WatchdogSec=10) when the daemon hangs", async () => {
      const first = await show(["MainPID", "NRestarts", "WatchdogTimestampMonotonic"]);
      // A WATCHDOG=1 arriving moves WatchdogTimestamp; the daemon pings every WatchdogSec/2.
      await until(
        "a WATCHDOG=1 ping",
        async () => {
          const now = await show(["WatchdogTimestampMonotonic"]);
          return now.WatchdogTimestampMonotonic !== first.WatchdogTimestampMonotonic
            ? true
            : undefined;
        },
        8_000,
        250,
      );
      const stoppedAt = Date.now();
      await rulesThroughout(async () => {
        await vm().mustExec(["systemctl", "kill", "--kill-whom=main", "--signal=SIGSTOP", UNIT]);
        await restartedOnceMore(first, "the watchdog restart", 30_000, 250);
      });
      const elapsed = Date.now() - stoppedAt;
      // The last ping was at most 5 s before SIGSTOP; the timeout is 10 s after it, plus RestartSec=1.
      assert.ok(
        elapsed >= 4_000 && elapsed <= 25_000,
        `restart came ${String(elapsed)} ms after SIGSTOP`,
      );
      const manager = managerMessages(await unitJournal(vm(), UNIT)).map((e) => String(e.MESSAGE));
      assert.ok(
        manager.some((m) => m.includes("Watchdog timeout")),
        manager.join("\n"),
      );
      assert.ok(
        manager.some((m) => m.includes("Failed with result 'watchdog'")),
        manager.join("\n"),
      );
    });

    void it("stops cleanly on `systemctl stop` and leaves the rules in the kernel", async () => {
      await vm().mustExec(["systemctl", "stop", UNIT]);
      assert.equal((await vm().exec(["systemctl", "is-active", UNIT])).stdout.trim(), "inactive");
      const state = await show(["Result", "ExecMainCode", "ExecMainStatus"]);
      assert.deepEqual(state, { Result: "success", ExecMainCode: "1", ExecMainStatus: "0" });
      assert.deepEqual(await ourRules(), baseline);
      // The daemon saw SIGTERM and said so (not killed by the TimeoutStopSec SIGKILL).
      await until(
        "the daemon's stopping line",
        async () => {
          const all = await daemonJournal();
          return all.some((l) => l.msg.startsWith("stopping; the rules stay in force"))
            ? true
            : undefined;
        },
        5_000,
      );
    });

    void it("logs nothing at warning level while being stopped", async () => {
      const lines = await daemonJournal();
      const stopping = lines.findLast((l) => l.msg.startsWith("stopping; the rules stay in force"));
      assert.ok(stopping, "no stopping line");
      const afterStop = lines.filter(
        (l) => l.pid === stopping.pid && l.monotonicUsec >= stopping.monotonicUsec,
      );
      assert.deepEqual(
        afterStop.filter((l) => l.level >= 40).map((l) => l.msg),
        [],
      );
    });
  },
);
