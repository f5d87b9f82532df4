// The demo as a user runs it (`node --import tsx demo/demo.ts` from the repo root): it must tell
// the whole story with the expected outcomes, exit 0, and leave nothing behind; and when it is
// interrupted (SIGINT, SIGTERM) it must still remove everything it made. Needs root.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { after, describe, test } from "node:test";
import { execa } from "execa";
import { isAlive } from "./harness/index.js";
import { REPO_ROOT, assertBuilt } from "./support.js";

const DEMO_TIMEOUT_MS = 120_000;

interface DemoExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

interface DemoRun {
  readonly pid: number;
  readonly exited: Promise<DemoExit>;
  output(): string;
  /** Resolves with the first output line matching `pattern`; rejects on timeout or exit. */
  waitForLine(pattern: RegExp, timeoutMs: number): Promise<string>;
}

const running = new Set<DemoRun>();

function startDemo(): DemoRun {
  assertBuilt();
  const child = spawn(process.execPath, ["--import", "tsx", "demo/demo.ts"], {
    cwd: REPO_ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const pid = child.pid;
  assert.ok(pid !== undefined, "the demo did not start");
  let output = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
  const exited = new Promise<DemoExit>((resolve) => {
    child.once("close", (code, signal) => {
      resolve({ code, signal });
    });
  });
  let done = false;
  const run: DemoRun = {
    pid,
    exited,
    output: () => output,
    waitForLine: async (pattern, timeoutMs) => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const line = output.split("\n").find((l) => pattern.test(l));
        if (line !== undefined) return line;
        if (done) throw new Error(`the demo ended before printing ${String(pattern)}:\n${output}`);
        if (Date.now() > deadline)
          throw new Error(`no ${String(pattern)} within ${String(timeoutMs)} ms:\n${output}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    },
  };
  running.add(run);
  void exited.then(() => {
    done = true;
    running.delete(run);
  });
  return run;
}

// A failed assertion must not leave a demo running: SIGTERM lets it clean up after itself.
after(async () => {
  for (const run of running) {
    try {
      process.kill(run.pid, "SIGTERM");
    } catch {
      continue; // exited in the meantime
    }
    await Promise.race([run.exited, new Promise((resolve) => setTimeout(resolve, 30_000))]);
  }
});

function matchOrFail(output: string, pattern: RegExp): RegExpExecArray {
  const match = pattern.exec(output);
  assert.ok(match, `expected ${String(pattern)} in the demo's output:\n${output}`);
  return match;
}

/** Everything the demo says it created, read back from its own narration. */
function createdBy(output: string): { prefix: string; configDir?: string; daemonPid?: number } {
  const prefix = matchOrFail(output, /testbed (imdsg-[0-9a-f]{6}):/)[1] ?? "";
  const configDir = /config (\/\S+)\/config\.yaml:/.exec(output)?.[1];
  const daemonPid = /daemon ready after .*pid (\d+)/.exec(output)?.[1];
  return {
    prefix,
    ...(configDir === undefined ? {} : { configDir }),
    ...(daemonPid === undefined ? {} : { daemonPid: Number(daemonPid) }),
  };
}

async function hostLines(argv: readonly string[]): Promise<string[]> {
  const [file = "", ...args] = argv;
  const result = await execa(file, args, { reject: false });
  return result.stdout.split("\n");
}

async function assertNothingLeft(output: string): Promise<void> {
  const { prefix, configDir, daemonPid } = createdBy(output);
  const principalPrefix = prefix.replace("-", "");

  const namespaces = (await hostLines(["ip", "netns", "list"])).filter((l) => l.startsWith(prefix));
  assert.deepEqual(namespaces, [], "network namespaces left behind");
  const users = (await hostLines(["getent", "passwd"])).filter((l) =>
    l.startsWith(principalPrefix),
  );
  assert.deepEqual(users, [], "users left behind");
  const groups = (await hostLines(["getent", "group"])).filter((l) =>
    l.startsWith(principalPrefix),
  );
  assert.deepEqual(groups, [], "groups left behind");
  const dirs = readdirSync(tmpdir()).filter((name) => name.startsWith(`${prefix}-`));
  assert.deepEqual(dirs, [], "temp dirs left behind");
  if (configDir !== undefined) assert.ok(!existsSync(configDir), `${configDir} left behind`);
  if (daemonPid !== undefined)
    assert.ok(!isAlive(daemonPid), `daemon ${String(daemonPid)} still runs`);

  // Read-only dumps of the host namespace: the demo must never have written rules there.
  for (const dump of ["iptables-save", "ip6tables-save"]) {
    const ours = (await hostLines([dump])).filter((l) => /IMDS-GUARD|imds-guard|imdsg/i.test(l));
    assert.deepEqual(ours, [], `imds rules in the host's ${dump}`);
  }
}

void describe("the demo", () => {
  void test(
    "tells the whole story with real outcomes, exits 0 and leaves nothing behind",
    { timeout: DEMO_TIMEOUT_MS },
    async () => {
      const run = startDemo();
      const { code, signal } = await run.exited;
      const output = run.output();
      assert.equal(code, 0, `exit ${String(code ?? signal)}:\n${output}`);

      for (const target of ["169\\.254\\.169\\.254:80", "\\[fd00:ec2::254\\]:80"]) {
        matchOrFail(output, new RegExp(`✔ trusty \\(uid \\d+\\) → ${target}: 200 in [\\d.]+ ms`));
        matchOrFail(
          output,
          new RegExp(`✘ apache \\(uid \\d+\\) → ${target}: refused in [\\d.]+ ms`),
        );
      }
      matchOrFail(output, /✔ daemon ready after [\d.]+ ms/);
      matchOrFail(output, /# iptables-\w+ -F IMDS-GUARD/);
      matchOrFail(output, /✔ imds-guard repaired ipv4 in \d+ ms/);

      // newhire: refused, then the usermod, then the daemon picks it up, then 200 on both families.
      const refusedAt = matchOrFail(
        output,
        /✘ newhire \(uid \d+, gid \d+, no supplementary groups\) → 169\.254\.169\.254:80: refused/,
      ).index;
      const usermodAt = matchOrFail(
        output,
        /# usermod -aG imdsg[0-9a-f]{6}-imds-readers imdsg[0-9a-f]{6}-newhire/,
      ).index;
      const appliedAt = matchOrFail(
        output,
        /✔ the daemon applied the new policy \d+ ms after usermod returned \(ipv4, ipv6\)/,
      ).index;
      assert.ok(refusedAt < usermodAt && usermodAt < appliedAt, "newhire's story is out of order");
      const later = output.slice(appliedAt);
      matchOrFail(
        later,
        /✔ newhire \(uid \d+, gid \d+, no supplementary groups\) → 169\.254\.169\.254:80: 200 in/,
      );
      matchOrFail(
        later,
        /✔ newhire \(uid \d+, gid \d+, no supplementary groups\) → \[fd00:ec2::254\]:80: 200 in/,
      );

      // The metrics excerpt, as served.
      matchOrFail(output, /# curl -sS http:\/\/127\.0\.0\.1:9877\/metrics/);
      matchOrFail(output, /^ {4}imds_guard_ready 1$/m);
      matchOrFail(output, /^ {4}imds_guard_drift_detected_total\{family="ipv4",[^}]*\} [1-9]/m);
      matchOrFail(output, /^ {4}imds_guard_drift_repair_duration_seconds_count [1-9]/m);
      matchOrFail(output, /^ {4}imds_guard_refused_packets_total\{family="ipv4"\} [1-9]/m);
      matchOrFail(output, /^ {4}imds_guard_refused_packets_total\{family="ipv6"\} [1-9]/m);

      matchOrFail(output, /✔ daemon stopped on SIGTERM in [\d.]+ ms \(exit 0\)/);
      matchOrFail(output, /✔ host namespace firewall .*: 0 imds-guard rules/);
      matchOrFail(output, /✔ all \d+ expected outcomes happened, in [\d.]+ s/);
      assert.doesNotMatch(output, /UNEXPECTED/);

      await assertNothingLeft(output);
    },
  );

  for (const [signal, exitCode] of [
    ["SIGINT", 130],
    ["SIGTERM", 143],
  ] as const) {
    void test(
      `${signal} while the daemon runs: cleans up everything and exits ${String(exitCode)}`,
      { timeout: DEMO_TIMEOUT_MS },
      async () => {
        const run = startDemo();
        await run.waitForLine(/✔ daemon ready after/, 60_000);
        const sentAt = Date.now();
        process.kill(run.pid, signal);
        const { code } = await run.exited;
        const output = run.output();
        assert.equal(code, exitCode, `exit ${String(code)}:\n${output}`);
        assert.ok(Date.now() - sentAt < 30_000, `took ${String(Date.now() - sentAt)} ms to exit`);
        matchOrFail(output, new RegExp(`── ${signal}: interrupted; cleaning up`));
        matchOrFail(output, /removed, and checked gone/);
        matchOrFail(
          output,
          new RegExp(
            `interrupted by ${signal} after [\\d.]+ s; everything the demo created was removed`,
          ),
        );
        assert.doesNotMatch(output, /still present after clean-up/);
        await assertNothingLeft(output);
      },
    );
  }
});
