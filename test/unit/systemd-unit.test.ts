// The shipped unit file as systemd itself reads it: no unknown or ignored settings, and a
// sandbox whose exposure score does not quietly regress. Needs systemd-analyze, not a running systemd.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { execa } from "execa";

const UNIT_NAME = "imds-guard.service";
const UNIT_PATH = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "systemd", UNIT_NAME);

// Measured 2.6 ("OK") with systemd 252. Root with CAP_NET_ADMIN in the host network namespace is
// what the job needs, and that alone costs about 1.1; the margin leaves room for one deliberate
// relaxation, not for dropping a whole group of protections.
const MAX_EXPOSURE = 3.0;

const haveAnalyze = spawnSync("systemd-analyze", ["--version"]).error === undefined;

// systemd-analyze verify checks that ExecStart= and ExecReload= are executable, and /usr/bin/imds-guard only exists
// once the package is installed; point it at node, which is what the link runs anyway.
async function unitCopy(): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), "imdsg-unit-"));
  const path = join(dir, UNIT_NAME);
  const text = await readFile(UNIT_PATH, "utf8");
  const patched = text.replace(
    /^(ExecStart|ExecReload)=\/usr\/bin\/imds-guard /gm,
    "$1=/usr/bin/node ",
  );
  assert.notEqual(patched, text, "ExecStart= line not found");
  await writeFile(path, patched);
  return { path, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

void test(
  "systemd-analyze verify accepts the unit without warnings",
  { skip: !haveAnalyze && "systemd-analyze not installed" },
  async (t) => {
    const copy = await unitCopy();
    t.after(copy.cleanup);
    const result = await execa("systemd-analyze", ["verify", copy.path], { reject: false });
    assert.equal(result.exitCode, 0, `${result.stdout}\n${result.stderr}`);
    // Other units on the host may draw complaints; ours, or any unknown/ignored setting, may not.
    const complaints = `${result.stdout}\n${result.stderr}`
      .split("\n")
      .filter((line) =>
        /imds-guard|Unknown (key|section|lvalue)|[Ii]gnoring|Invalid|[Ff]ailed to parse/.test(line),
      );
    assert.deepEqual(complaints, []);
  },
);

void test(
  `systemd-analyze security rates the sandbox at most ${MAX_EXPOSURE.toFixed(1)}`,
  { skip: !haveAnalyze && "systemd-analyze not installed" },
  async (t) => {
    const copy = await unitCopy();
    t.after(copy.cleanup);
    const result = await execa(
      "systemd-analyze",
      ["security", "--offline=true", "--no-pager", copy.path],
      {
        reject: false,
        env: { SYSTEMD_COLORS: "0" },
      },
    );
    assert.equal(result.exitCode, 0, result.stderr);
    const match = /Overall exposure level for \S+: (\d+(?:\.\d+)?)/.exec(result.stdout);
    assert.ok(match?.[1] !== undefined, result.stdout);
    const exposure = Number(match[1]);
    t.diagnostic(`exposure ${exposure.toFixed(1)}`);
    assert.ok(
      exposure <= MAX_EXPOSURE,
      `exposure ${exposure.toFixed(1)} > ${MAX_EXPOSURE.toFixed(1)}\n${result.stdout}`,
    );
  },
);

void test("the unit keeps the settings the daemon depends on", async () => {
  const text = await readFile(UNIT_PATH, "utf8");
  const settings = text
    .split("\n")
    .filter((line) => /^[A-Za-z]+=/.test(line))
    .map((line) => line.trim());
  const cases: [string, string][] = [
    ["Type=notify", "READY=1 gates start-up"],
    ["NotifyAccess=all", "notifications come from the systemd-notify child"],
    ["WatchdogSec=10", "the reconcile loop pings the watchdog"],
    ["CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW", "iptables needs exactly these"],
    ["ReadWritePaths=-/run/xtables.lock", "ProtectSystem=strict makes /run read-only"],
    ["MemoryDenyWriteExecute=no", "V8's JIT needs W+X pages"],
  ];
  for (const [setting, why] of cases) assert.ok(settings.includes(setting), `${setting}: ${why}`);
  assert.equal(
    settings.some((s) => s.startsWith("User=")),
    false,
    "must run as root",
  );
});
