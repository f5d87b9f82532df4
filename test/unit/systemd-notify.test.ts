// The notifier against a real AF_UNIX/SOCK_DGRAM listener that records what systemd would see:
// the datagram text and the SCM_CREDENTIALS PID. Also: nothing runs when NOTIFY_SOCKET is unset.

import assert from "node:assert/strict";
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { test } from "node:test";

import { createNotifier } from "../../src/adapters/systemd-notify.js";

// Closing received fds matters: systemd-notify waits for the read end of the pipe it sends with
// BARRIER=1 to hang up, the way systemd acknowledges a barrier.
const LISTENER = fileURLToPath(new URL("../fixtures/notify-listener.py", import.meta.url));

interface Datagram {
  pid: number | null;
  fields: Map<string, string>;
}

interface Listener {
  socketPath: string;
  /** Resolves once `count` non-barrier datagrams have arrived. */
  next(count: number): Promise<Datagram[]>;
  close(): Promise<void>;
}

async function startListener(): Promise<Listener> {
  const dir = await mkdtemp(join(tmpdir(), "imdsg-notify-"));
  const socketPath = join(dir, "notify.sock");
  const child: ChildProcessWithoutNullStreams = spawn("/usr/bin/python3", [LISTENER, socketPath]);
  const received: Datagram[] = [];
  let wake: (() => void) | undefined;
  let listening: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => (listening = resolve));
  const lines = createInterface({ input: child.stdout });
  lines.on("line", (line) => {
    const message = JSON.parse(line) as { listening?: boolean; pid?: number | null; data?: string };
    if (message.listening === true) {
      listening();
      return;
    }
    const fields = new Map<string, string>();
    for (const assignment of (message.data ?? "").split("\n")) {
      const eq = assignment.indexOf("=");
      if (eq > 0) fields.set(assignment.slice(0, eq), assignment.slice(eq + 1));
    }
    // systemd-notify follows each message with its own BARRIER=1 datagram: not ours.
    if (fields.has("BARRIER")) return;
    received.push({ pid: message.pid ?? null, fields });
    wake?.();
  });
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    ready,
    new Promise((_, reject) => {
      timer = setTimeout(() => {
        reject(new Error("listener did not start"));
      }, 5000);
    }),
  ]).finally(() => {
    clearTimeout(timer);
  });

  return {
    socketPath,
    async next(count) {
      const deadline = Date.now() + 10_000;
      while (received.length < count) {
        if (Date.now() > deadline)
          throw new Error(`only ${received.length} of ${count} datagrams arrived`);
        await new Promise<void>((resolve) => {
          const poll = setTimeout(resolve, 200);
          wake = () => {
            clearTimeout(poll);
            resolve();
          };
        });
      }
      return received.splice(0, count);
    },
    async close() {
      child.kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

function hasCapSysAdmin(): Promise<boolean> {
  return import("node:fs/promises").then(async ({ readFile }) => {
    const status = await readFile("/proc/self/status", "utf8");
    const hex = /^CapEff:\s*([0-9a-f]+)$/m.exec(status)?.[1] ?? "0";
    return (BigInt(`0x${hex}`) & (1n << 21n)) !== 0n;
  });
}

void test("messages reach a real notify socket in the order they were sent", async (t) => {
  const listener = await startListener();
  t.after(() => listener.close());
  const errors: unknown[] = [];
  const notifier = createNotifier({
    env: { NOTIFY_SOCKET: listener.socketPath },
    onError: (error) => errors.push(error),
  });
  assert.equal(notifier.enabled, true);

  // Not awaited one by one on purpose: the notifier must keep issue order by itself.
  const sends = [
    notifier.ready("starting\nsecond line"),
    notifier.status("reconciled 3 rules"),
    notifier.watchdog(),
    notifier.reloading(),
    notifier.ready(),
    notifier.stopping(),
  ];
  await Promise.all(sends);
  assert.deepEqual(errors, []);
  const got = await listener.next(6);

  const [ready, status, watchdog, reloading, reloaded, stopping] = got.map((d) => d.fields);
  assert.equal(ready?.get("READY"), "1");
  assert.equal(ready.get("STATUS"), "starting second line", "STATUS is flattened to one line");
  assert.deepEqual([...(status?.entries() ?? [])], [["STATUS", "reconciled 3 rules"]]);
  assert.deepEqual([...(watchdog?.entries() ?? [])], [["WATCHDOG", "1"]]);
  assert.equal(reloading?.get("RELOADING"), "1");
  assert.match(reloading.get("MONOTONIC_USEC") ?? "", /^\d+$/);
  assert.deepEqual([...(reloaded?.entries() ?? [])], [["READY", "1"]]);
  assert.deepEqual([...(stopping?.entries() ?? [])], [["STOPPING", "1"]]);
  for (const fields of got.map((d) => d.fields)) {
    assert.equal(fields.has("MAINPID"), false, "no MAINPID: we do not pass --pid");
  }

  // With CAP_SYS_ADMIN systemd-notify can claim its parent's PID (ours); without it the kernel
  // refuses and libsystemd falls back to systemd-notify's own PID (hence NotifyAccess=all).
  if (await hasCapSysAdmin()) {
    for (const datagram of got) assert.equal(datagram.pid, process.pid);
  }
});

void test("MONOTONIC_USEC is on the CLOCK_MONOTONIC scale (close to /proc/uptime, not the epoch)", async (t) => {
  const listener = await startListener();
  t.after(() => listener.close());
  const notifier = createNotifier({ env: { NOTIFY_SOCKET: listener.socketPath } });
  await notifier.reloading();
  const [datagram] = await listener.next(1);
  const usec = Number(datagram?.fields.get("MONOTONIC_USEC"));
  const { readFile } = await import("node:fs/promises");
  const uptimeSeconds = Number((await readFile("/proc/uptime", "utf8")).split(" ")[0]);
  // Uptime counts suspend time and CLOCK_MONOTONIC does not, so only an upper bound is exact.
  assert.ok(usec / 1e6 <= uptimeSeconds + 1, `${usec} µs vs uptime ${uptimeSeconds} s`);
  assert.ok(usec > 0);
});

void test("without NOTIFY_SOCKET nothing is run and sends resolve", async () => {
  const calls: string[][] = [];
  const notifier = createNotifier({
    env: { WATCHDOG_USEC: "10000000" },
    run: (argv) => {
      calls.push(argv);
      return Promise.resolve();
    },
  });
  assert.equal(notifier.enabled, false);
  await notifier.ready("x");
  await notifier.status("x");
  await notifier.watchdog();
  await notifier.reloading();
  await notifier.stopping();
  await notifier.send({ FOO: "bar" });
  assert.deepEqual(calls, []);
});

void test("argv: no shell, no options that a value could smuggle in", async () => {
  const calls: string[][] = [];
  const notifier = createNotifier({
    env: { NOTIFY_SOCKET: "/run/systemd/notify" },
    binary: "/usr/bin/systemd-notify",
    run: (argv) => {
      calls.push(argv);
      return Promise.resolve();
    },
  });
  await notifier.ready("a\r\nb");
  await notifier.send({ STATUS: "--ready" });
  assert.deepEqual(calls, [
    ["/usr/bin/systemd-notify", "--", "READY=1", "STATUS=a b"],
    ["/usr/bin/systemd-notify", "--", "STATUS=--ready"],
  ]);
});

void test("a failing run is reported, never thrown, and later sends still go out", async () => {
  const errors: unknown[] = [];
  const calls: string[][] = [];
  let fail = true;
  const notifier = createNotifier({
    env: { NOTIFY_SOCKET: "/nonexistent" },
    onError: (error) => errors.push(error),
    run: (argv) => {
      calls.push(argv);
      if (fail) {
        fail = false;
        return Promise.reject(new Error("systemd-notify exited 1"));
      }
      return Promise.resolve();
    },
  });
  await notifier.watchdog();
  await notifier.watchdog();
  assert.equal(errors.length, 1);
  assert.equal(calls.length, 2);
});

void test("the real binary failing (socket absent) is reported through onError", async () => {
  const errors: unknown[] = [];
  const notifier = createNotifier({
    env: { NOTIFY_SOCKET: join(tmpdir(), "imdsg-no-such-socket") },
    onError: (error) => errors.push(error),
  });
  await notifier.ready();
  assert.equal(errors.length, 1);
});

void test("a bad field name is reported and nothing is run", async () => {
  const errors: unknown[] = [];
  const calls: string[][] = [];
  const notifier = createNotifier({
    env: { NOTIFY_SOCKET: "/run/systemd/notify" },
    onError: (error) => errors.push(error),
    run: (argv) => {
      calls.push(argv);
      return Promise.resolve();
    },
  });
  await notifier.send({ "--pid": "1" });
  assert.equal(errors.length, 1);
  assert.deepEqual(calls, []);
});

void test("watchdogIntervalMs: half of WATCHDOG_USEC, only for the PID it names", () => {
  const cases: { intent: string; env: NodeJS.ProcessEnv; want: number | undefined }[] = [
    { intent: "no watchdog configured", env: {}, want: undefined },
    { intent: "WatchdogSec=10 -> ping every 5 s", env: { WATCHDOG_USEC: "10000000" }, want: 5000 },
    {
      intent: "WATCHDOG_PID is us",
      env: { WATCHDOG_USEC: "10000000", WATCHDOG_PID: "4242" },
      want: 5000,
    },
    {
      intent: "WATCHDOG_PID is someone else",
      env: { WATCHDOG_USEC: "10000000", WATCHDOG_PID: "1" },
      want: undefined,
    },
    { intent: "garbage is ignored", env: { WATCHDOG_USEC: "ten" }, want: undefined },
    { intent: "zero disables", env: { WATCHDOG_USEC: "0" }, want: undefined },
  ];
  for (const { intent, env, want } of cases) {
    const notifier = createNotifier({ env, pid: 4242, run: () => Promise.resolve() });
    assert.equal(notifier.watchdogIntervalMs(), want, intent);
  }
});
