// The iptables adapter and backend detection, driven by a fake command runner that records
// every argv and stdin: lock retries, errors that keep the exact restore input, and the
// flavour choice for `backend: auto`.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { detectBackend } from "../../src/adapters/backend-detect.js";
import type { CommandResult, CommandRunner } from "../../src/adapters/command-runner.js";
import { createIptables } from "../../src/adapters/iptables.js";
import { ImdsGuardError } from "../../src/core/errors.js";

interface Call {
  readonly file: string;
  readonly args: readonly string[];
  readonly input?: string;
}

function fakeRunner(answer: (call: Call) => Partial<CommandResult>): {
  run: CommandRunner;
  calls: Call[];
} {
  const calls: Call[] = [];
  const run: CommandRunner = (file, args, options = {}) => {
    const call: Call = {
      file,
      args,
      ...(options.input === undefined ? {} : { input: options.input }),
    };
    calls.push(call);
    return Promise.resolve({
      exitCode: 0,
      stdout: "",
      stderr: "",
      timedOut: false,
      ...answer(call),
    });
  };
  return { run, calls };
}

const noSleep = (): Promise<void> => Promise.resolve();

void describe("writing with iptables-restore", () => {
  void test("sends the script on stdin to the flavour's restore binary with --noflush and --wait", async () => {
    const { run, calls } = fakeRunner(() => ({}));
    await createIptables(run, "legacy").restore("ipv6", "*filter\nCOMMIT\n");
    assert.deepEqual(calls, [
      {
        file: "ip6tables-legacy-restore",
        args: ["--noflush", "--wait", "5"],
        input: "*filter\nCOMMIT\n",
      },
    ]);
  });

  void test("retries while the xtables lock is busy (exit 4), then succeeds", async () => {
    let attempts = 0;
    const { run, calls } = fakeRunner(() =>
      ++attempts < 3
        ? { exitCode: 4, stderr: "Another app is currently holding the xtables lock" }
        : {},
    );
    await createIptables(run, "nft", { sleep: noSleep }).restore("ipv4", "x");
    assert.equal(calls.length, 3);
  });

  void test("gives up on a lock that stays busy with IMDSG_IPTABLES_LOCK", async () => {
    const { run } = fakeRunner(() => ({ exitCode: 4, stderr: "lock" }));
    await assert.rejects(
      createIptables(run, "nft", { sleep: noSleep }).restore("ipv4", "x"),
      (error: unknown) => error instanceof ImdsGuardError && error.code === "IMDSG_IPTABLES_LOCK",
    );
  });

  void test("any other failure is IMDSG_IPTABLES_RESTORE with the exact input and stderr", async () => {
    const { run, calls } = fakeRunner(() => ({
      exitCode: 2,
      stderr: "iptables-restore: line 3 failed",
    }));
    const script = "*filter\n-A NOPE\nCOMMIT\n";
    await assert.rejects(createIptables(run, "nft").restore("ipv4", script), (error: unknown) => {
      assert.ok(error instanceof ImdsGuardError);
      assert.equal(error.code, "IMDSG_IPTABLES_RESTORE");
      assert.equal(error.details.input, script);
      assert.equal(error.details.stderr, "iptables-restore: line 3 failed");
      assert.match(error.message, /line 3 failed/);
      return true;
    });
    assert.equal(calls.length, 1, "not retried");
  });
});

void describe("choosing the flavour for backend: auto", () => {
  const save = (rules: number, ours = 0): string =>
    [
      "*filter",
      ":OUTPUT ACCEPT [0:0]",
      ...Array.from(
        { length: rules },
        (_, i) => `-A OUTPUT ${i < ours ? '-m comment --comment "imds-guard:x" ' : ""}-j ACCEPT`,
      ),
      "COMMIT",
    ].join("\n");

  const cases: readonly {
    intent: string;
    nft: string;
    legacy: string;
    legacyLoaded: boolean;
    expect: "nft" | "legacy";
    both: boolean;
  }[] = [
    {
      intent: "nothing anywhere: nft, the default",
      nft: save(0),
      legacy: save(0),
      legacyLoaded: true,
      expect: "nft",
      both: false,
    },
    {
      intent: "legacy tables not loaded: legacy is never probed",
      nft: save(0),
      legacy: save(9),
      legacyLoaded: false,
      expect: "nft",
      both: false,
    },
    {
      intent: "only legacy holds rules: legacy",
      nft: save(0),
      legacy: save(3),
      legacyLoaded: true,
      expect: "legacy",
      both: false,
    },
    {
      intent: "legacy holds ours, nft holds others: stay with ours, and warn",
      nft: save(5),
      legacy: save(2, 2),
      legacyLoaded: true,
      expect: "legacy",
      both: true,
    },
    {
      intent: "nft holds ours: nft, and warn that legacy also holds rules",
      nft: save(2, 2),
      legacy: save(7),
      legacyLoaded: true,
      expect: "nft",
      both: true,
    },
    {
      intent: "both hold foreign rules: the one with more",
      nft: save(1),
      legacy: save(4),
      legacyLoaded: true,
      expect: "legacy",
      both: true,
    },
  ];
  for (const c of cases) {
    void test(c.intent, async () => {
      const { run, calls } = fakeRunner((call) => ({
        stdout: call.file.includes("legacy") ? c.legacy : c.nft,
      }));
      const decision = await detectBackend(run, "auto", () => Promise.resolve(c.legacyLoaded));
      assert.equal(decision.flavour, c.expect, decision.reason);
      assert.equal(decision.otherFlavourHoldsRules, c.both);
      if (!c.legacyLoaded)
        assert.ok(
          calls.every((call) => !call.file.includes("legacy")),
          "legacy never run",
        );
    });
  }

  void test("an explicit backend wins, but still reports rules in the other flavour", async () => {
    const { run } = fakeRunner((call) => ({
      stdout: call.file.includes("legacy") ? save(3) : save(0),
    }));
    const decision = await detectBackend(run, "nft", () => Promise.resolve(true));
    assert.equal(decision.flavour, "nft");
    assert.equal(decision.otherFlavourHoldsRules, true);
  });
});
