// NSS lookups through getent: one call per database for the whole list, partial answers
// (getent exit 2, "some keys not found") still count, real failures are errors.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { CommandResult, CommandRunner } from "../../src/adapters/command-runner.js";
import { createIdentityLookup } from "../../src/adapters/identity.js";
import { ImdsGuardError } from "../../src/core/errors.js";

function runnerFrom(answers: Record<string, Partial<CommandResult>>): {
  run: CommandRunner;
  calls: string[];
} {
  const calls: string[] = [];
  const run: CommandRunner = (file, args) => {
    const key = [file, ...args].join(" ");
    calls.push(key);
    return Promise.resolve({
      exitCode: 0,
      stdout: "",
      stderr: "",
      timedOut: false,
      ...(answers[key] ?? { exitCode: 2 }),
    });
  };
  return { run, calls };
}

void describe("asking NSS about the configured principals", () => {
  void test("one getent call per database for the whole list, plus one enumeration for primary groups", async () => {
    const { run, calls } = runnerFrom({
      "getent group readers ghosts": { exitCode: 2, stdout: "readers:x:700:alice\n" },
      "getent passwd root bob alice": {
        exitCode: 2,
        stdout: "root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1001::/home/alice:/bin/sh\n",
      },
      "getent passwd": {
        stdout: "root:x:0:0:root:/root:/bin/sh\ncarol:x:1002:700::/home/carol:/bin/sh\n",
      },
    });
    const snapshot = await createIdentityLookup(run)({
      users: ["root", "bob"],
      groups: ["readers", "ghosts"],
    });
    assert.deepEqual(calls, [
      "getent group readers ghosts",
      "getent passwd root bob alice",
      "getent passwd",
    ]);
    assert.deepEqual(snapshot.groups, [{ name: "readers", gid: 700, members: ["alice"] }]);
    assert.deepEqual(
      snapshot.passwd.map((entry) => entry.name),
      ["root", "alice", "carol"],
    );
  });

  void test("users only: no group lookup and no enumeration", async () => {
    const { run, calls } = runnerFrom({
      "getent passwd trusty": { stdout: "trusty:x:1000:1000::/:/bin/sh\n" },
    });
    await createIdentityLookup(run)({ users: ["trusty"], groups: [] });
    assert.deepEqual(calls, ["getent passwd trusty"]);
  });

  void test("a getent failure other than 'not found' is IMDSG_NSS_LOOKUP, never an empty answer", async () => {
    const { run } = runnerFrom({ "getent passwd trusty": { exitCode: 1, stderr: "nss broken" } });
    await assert.rejects(
      createIdentityLookup(run)({ users: ["trusty"], groups: [] }),
      (error: unknown) => error instanceof ImdsGuardError && error.code === "IMDSG_NSS_LOOKUP",
    );
  });
});
