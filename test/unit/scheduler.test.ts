// The reconcile scheduler: one run at a time, triggers that arrive meanwhile merge into one
// follow-up, failures retried with capped exponential backoff. Driven by a fake clock.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { Timers, TriggerBatch } from "../../src/daemon/scheduler.js";
import { createScheduler } from "../../src/daemon/scheduler.js";

/** A manual clock: timers fire only when the test advances time. */
function fakeTimers(): Timers & { advance(ms: number): Promise<void> } {
  let now = 0;
  let nextId = 0;
  const pending = new Map<number, { at: number; fn: () => void }>();
  const settle = () => new Promise<void>((resolve) => setImmediate(resolve));
  return {
    now: () => now,
    setTimeout: (fn, ms) => {
      const id = nextId++;
      pending.set(id, { at: now + ms, fn });
      return id;
    },
    clearTimeout: (handle) => {
      pending.delete(handle as number);
    },
    async advance(ms) {
      const end = now + ms;
      for (;;) {
        await settle();
        const due = [...pending.entries()]
          .filter(([, t]) => t.at <= end)
          .sort((a, b) => a[1].at - b[1].at)[0];
        if (due === undefined) break;
        pending.delete(due[0]);
        now = due[1].at;
        due[1].fn();
      }
      now = end;
      await settle();
    },
  };
}

void describe("reconcile scheduling", () => {
  void test("a burst of triggers becomes one run after the debounce, carrying every kind", async () => {
    const timers = fakeTimers();
    const batches: TriggerBatch[] = [];
    const scheduler = createScheduler({
      timers,
      debounceMs: 50,
      run: (batch) => {
        batches.push(batch);
        return Promise.resolve(true);
      },
    });
    scheduler.trigger("event");
    scheduler.trigger("poll");
    scheduler.trigger("event");
    await timers.advance(49);
    assert.equal(batches.length, 0, "nothing before the debounce");
    await timers.advance(1);
    assert.equal(batches.length, 1);
    assert.deepEqual([...(batches[0]?.kinds ?? [])].sort(), ["event", "poll"]);
    assert.equal(batches[0]?.firstQueuedAt, 0);
  });

  void test("triggers that arrive while a run is in progress merge into exactly one follow-up run", async () => {
    const timers = fakeTimers();
    const batches: TriggerBatch[] = [];
    let release: () => void = () => undefined;
    let concurrent = 0;
    let maxConcurrent = 0;
    const scheduler = createScheduler({
      timers,
      debounceMs: 10,
      run: async (batch) => {
        batches.push(batch);
        concurrent++;
        maxConcurrent = Math.max(maxConcurrent, concurrent);
        if (batches.length === 1) await new Promise<void>((resolve) => (release = resolve));
        concurrent--;
        return true;
      },
    });
    scheduler.trigger("start");
    await timers.advance(10);
    assert.equal(batches.length, 1, "first run started");
    for (const kind of ["event", "file", "event", "poll"] as const) scheduler.trigger(kind);
    await timers.advance(100);
    assert.equal(batches.length, 1, "no second run while the first is running");
    release();
    await timers.advance(10);
    assert.equal(batches.length, 2, "one follow-up");
    assert.deepEqual([...(batches[1]?.kinds ?? [])].sort(), ["event", "file", "poll"]);
    assert.equal(maxConcurrent, 1);
    await scheduler.idle();
  });

  void test("a failing run is retried with exponential backoff capped at the maximum", async () => {
    const timers = fakeTimers();
    const startedAt: number[] = [];
    const scheduler = createScheduler({
      timers,
      debounceMs: 0,
      backoffInitialMs: 100,
      backoffMaxMs: 400,
      run: () => {
        startedAt.push(timers.now());
        return Promise.resolve(startedAt.length >= 6);
      },
    });
    scheduler.trigger("start");
    await timers.advance(5_000);
    const gaps = startedAt.slice(1).map((at, i) => at - (startedAt[i] ?? 0));
    assert.deepEqual(gaps, [100, 200, 400, 400, 400]);
    assert.equal(scheduler.failures, 0, "success resets the failure count");
    assert.equal(startedAt.length, 6, "no runs after the success");
  });

  void test("a trigger during backoff does not bypass it", async () => {
    const timers = fakeTimers();
    const startedAt: number[] = [];
    const scheduler = createScheduler({
      timers,
      debounceMs: 0,
      backoffInitialMs: 1_000,
      run: () => {
        startedAt.push(timers.now());
        return Promise.resolve(startedAt.length > 1);
      },
    });
    scheduler.trigger("start");
    await timers.advance(10);
    scheduler.trigger("event");
    await timers.advance(500);
    assert.equal(startedAt.length, 1, "still backing off");
    await timers.advance(600);
    assert.deepEqual(startedAt, [0, 1_000]);
  });

  void test("a throwing run counts as a failure, and stop() waits for the running one", async () => {
    const timers = fakeTimers();
    let runs = 0;
    const scheduler = createScheduler({
      timers,
      debounceMs: 0,
      run: () => {
        runs++;
        return Promise.reject(new Error("boom"));
      },
    });
    scheduler.trigger("start");
    await timers.advance(1);
    assert.equal(scheduler.failures, 1);
    await scheduler.stop();
    scheduler.trigger("event");
    await timers.advance(60_000);
    assert.equal(runs, 1, "nothing runs after stop()");
  });
});
