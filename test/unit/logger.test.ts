// What an operator sees: JSON lines on the stream we were given, a journald priority prefix
// only when JOURNAL_STREAM says stdout is the journal, and repeated errors throttled.

import assert from "node:assert/strict";
import { createWriteStream } from "node:fs";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { test } from "node:test";

import { createLogger, createThrottle } from "../../src/adapters/logger.js";

function capture(): { stream: PassThrough; lines: () => string[] } {
  const stream = new PassThrough();
  const chunks: string[] = [];
  stream.on("data", (chunk: Buffer) => chunks.push(chunk.toString("utf8")));
  return {
    stream,
    lines: () =>
      chunks
        .join("")
        .split("\n")
        .filter((l) => l !== ""),
  };
}

void test("without JOURNAL_STREAM every line is plain JSON with pid and no hostname", () => {
  const { stream, lines } = capture();
  const log = createLogger({ stream, env: {} });
  log.info({ rules: 3 }, "reconciled");
  const [line = ""] = lines();
  assert.ok(line.startsWith("{"), line);
  const record = JSON.parse(line) as Record<string, unknown>;
  assert.equal(record.msg, "reconciled");
  assert.equal(record.rules, 3);
  assert.equal(record.level, 30);
  assert.equal(record.pid, process.pid);
  assert.equal("hostname" in record, false);
});

void test("with JOURNAL_STREAM each line carries the syslog priority of its level", () => {
  const { stream, lines } = capture();
  const log = createLogger({ stream, level: "trace", env: { JOURNAL_STREAM: "8:12345" } });
  const cases: { intent: string; emit: (msg: string) => void; prefix: string }[] = [
    {
      intent: "fatal is an error to journald",
      emit: (m) => {
        log.fatal(m);
      },
      prefix: "<3>",
    },
    {
      intent: "error",
      emit: (m) => {
        log.error(m);
      },
      prefix: "<3>",
    },
    {
      intent: "warn is warning",
      emit: (m) => {
        log.warn(m);
      },
      prefix: "<4>",
    },
    {
      intent: "info",
      emit: (m) => {
        log.info(m);
      },
      prefix: "<6>",
    },
    {
      intent: "debug is debug",
      emit: (m) => {
        log.debug(m);
      },
      prefix: "<7>",
    },
    {
      intent: "trace is debug too",
      emit: (m) => {
        log.trace(m);
      },
      prefix: "<7>",
    },
  ];
  for (const { intent, emit } of cases) emit(intent);
  const got = lines();
  assert.equal(got.length, cases.length, "exactly one line per call, never duplicated");
  cases.forEach(({ intent, prefix }, i) => {
    const line = got[i] ?? "";
    assert.ok(line.startsWith(`${prefix}{`), `${intent}: ${line}`);
    assert.equal((JSON.parse(line.slice(prefix.length)) as { msg: string }).msg, intent);
  });
});

void test("the level option still filters when prefixing", () => {
  const { stream, lines } = capture();
  const log = createLogger({ stream, level: "warn", env: { JOURNAL_STREAM: "8:12345" } });
  log.info("dropped");
  log.debug("dropped");
  log.warn("kept");
  assert.deepEqual(
    lines().map((l) => l.slice(0, 3)),
    ["<4>"],
  );
});

void test("on a real fd, JOURNAL_STREAM counts only when it names that fd's device:inode", async () => {
  const dir = await mkdtemp(join(tmpdir(), "imdsg-log-"));
  try {
    const cases: {
      intent: string;
      journal: (file: string) => Promise<string>;
      wantPrefix: boolean;
    }[] = [
      {
        intent: "inherited from a parent, output redirected elsewhere",
        journal: () => Promise.resolve("1:1"),
        wantPrefix: false,
      },
      {
        intent: "names this very file, as systemd sets it",
        journal: async (file) => {
          const st = await stat(file, { bigint: true });
          return `${st.dev.toString()}:${st.ino.toString()}`;
        },
        wantPrefix: true,
      },
    ];
    for (const [i, { intent, journal, wantPrefix }] of cases.entries()) {
      const file = join(dir, `out-${i.toString()}.log`);
      const stream = createWriteStream(file);
      await new Promise((resolve) => stream.once("open", resolve));
      const log = createLogger({ stream, env: { JOURNAL_STREAM: await journal(file) } });
      log.info(intent);
      await new Promise<void>((resolve) => stream.end(resolve));
      const text = await readFile(file, "utf8");
      assert.equal(text.startsWith("<6>{"), wantPrefix, `${intent}: ${text}`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

void test("throttle: first occurrence logs, repeats within the window are counted, not logged", () => {
  let clock = 1_000;
  const throttle = createThrottle(60_000, () => clock);
  const steps: {
    intent: string;
    at: number;
    key: string;
    want: { log: boolean; suppressed: number };
  }[] = [
    {
      intent: "first time a key is seen",
      at: 1_000,
      key: "restore failed",
      want: { log: true, suppressed: 0 },
    },
    {
      intent: "repeat right away",
      at: 2_000,
      key: "restore failed",
      want: { log: false, suppressed: 0 },
    },
    {
      intent: "another key is independent",
      at: 2_000,
      key: "getent failed",
      want: { log: true, suppressed: 0 },
    },
    {
      intent: "still inside the window",
      at: 60_999,
      key: "restore failed",
      want: { log: false, suppressed: 0 },
    },
    {
      intent: "window over: log, say 2 were dropped",
      at: 61_000,
      key: "restore failed",
      want: { log: true, suppressed: 2 },
    },
    {
      intent: "counter restarts after logging",
      at: 62_000,
      key: "restore failed",
      want: { log: false, suppressed: 0 },
    },
  ];
  for (const { intent, at, key, want } of steps) {
    clock = at;
    assert.deepEqual(throttle.check(key), want, intent);
  }
  assert.equal(throttle.suppressed("restore failed"), 1);
  assert.equal(throttle.suppressed("never seen"), 0);
});

void test("throttle: shouldLog is the boolean form", () => {
  let clock = 0;
  const throttle = createThrottle(10, () => clock);
  assert.equal(throttle.shouldLog("k"), true);
  assert.equal(throttle.shouldLog("k"), false);
  clock = 10;
  assert.equal(throttle.shouldLog("k"), true);
});
