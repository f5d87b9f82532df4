// Owns the sd_notify protocol towards the service manager: READY/STATUS/WATCHDOG/RELOADING/STOPPING.
// Must never throw to its caller or crash the daemon, and must never run anything when
// NOTIFY_SOCKET is unset (not under systemd, or under a unit that is not Type=notify).

import { execa } from "execa";

export interface NotifierOptions {
  /** Where NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID are read from; read once, at creation. */
  env?: NodeJS.ProcessEnv;
  /** Runs one argv (argv[0] is the program). Injected by tests; the default runs it via execa. */
  run?: (argv: string[]) => Promise<void>;
  /** Told about every failed send; sends never reject. */
  onError?: (error: unknown) => void;
  /** The daemon's PID, compared with WATCHDOG_PID. */
  pid?: number;
  /** Program to run; the default is looked up on PATH. */
  binary?: string;
}

export interface Notifier {
  /** False when NOTIFY_SOCKET is unset: every send is then a no-op. */
  readonly enabled: boolean;
  send(fields: Record<string, string>): Promise<void>;
  ready(status?: string): Promise<void>;
  status(text: string): Promise<void>;
  watchdog(): Promise<void>;
  reloading(): Promise<void>;
  stopping(): Promise<void>;
  /** How often to send WATCHDOG=1 (half of WATCHDOG_USEC), or undefined when no watchdog is asked of us. */
  watchdogIntervalMs(): number | undefined;
}

// The barrier systemd-notify waits on is capped at 5 s inside systemd-notify itself; this only
// guards against a wedged child.
const RUN_TIMEOUT_MS = 10_000;

// Keys are environment-style names. Checking them also guarantees that no argv element starts
// with "-", so nothing we pass can be parsed as a systemd-notify option.
const FIELD_KEY = /^[A-Z][A-Z0-9_]*$/;

export function createNotifier(opts: NotifierOptions = {}): Notifier {
  const env = opts.env ?? process.env;
  const socket = env.NOTIFY_SOCKET ?? "";
  const enabled = socket !== "";
  const pid = opts.pid ?? process.pid;
  const binary = opts.binary ?? "systemd-notify";
  const report = (error: unknown): void => {
    try {
      opts.onError?.(error);
    } catch {
      // A failing error callback must not poison the send queue below.
    }
  };
  const run =
    opts.run ??
    (async (argv: string[]) => {
      const [file = binary, ...args] = argv;
      // No shell. NOTIFY_SOCKET is passed explicitly because opts.env may differ from
      // process.env (tests, or a daemon that scrubbed its own environment).
      await execa(file, args, {
        env: { NOTIFY_SOCKET: socket },
        stdin: "ignore",
        timeout: RUN_TIMEOUT_MS,
      });
    });

  // systemd-notify is a separate process per message, so two sends issued back to back could
  // overtake each other. Chaining them keeps RELOADING=1 before the READY=1 that ends it.
  let queue: Promise<void> = Promise.resolve();

  const send = (fields: Record<string, string>): Promise<void> => {
    if (!enabled) return Promise.resolve();
    const assignments: string[] = [];
    for (const [key, value] of Object.entries(fields)) {
      if (!FIELD_KEY.test(key)) {
        report(
          new Error(`sd_notify field name ${JSON.stringify(key)} is not an environment-style name`),
        );
        return Promise.resolve();
      }
      assignments.push(`${key}=${singleLine(value)}`);
    }
    if (assignments.length === 0) return Promise.resolve();
    // Without --pid, systemd-notify sends with SCM_CREDENTIALS claiming its parent's PID, which is
    // us because execa spawns it directly (no shell). We deliberately do not pass --pid: on
    // systemd 252 (and later) it also adds MAINPID=<pid> to every message. Claiming another PID
    // needs CAP_SYS_ADMIN; without it (our unit drops it) libsystemd falls back to systemd-notify's
    // own PID, which is why the unit needs NotifyAccess=all. We also do not pass --no-block: the
    // default waits on a BARRIER=1 until the manager has processed the message, so the message is
    // attributed to our cgroup while systemd-notify is still alive.
    const argv = [binary, "--", ...assignments];
    queue = queue.then(() => run(argv)).catch(report);
    return queue;
  };

  return {
    enabled,
    send,
    ready: (status) => send(status === undefined ? { READY: "1" } : { READY: "1", STATUS: status }),
    status: (text) => send({ STATUS: text }),
    watchdog: () => send({ WATCHDOG: "1" }),
    // systemd >= 253 (Type=notify-reload) wants MONOTONIC_USEC next to RELOADING=1 and reads it as
    // CLOCK_MONOTONIC; older versions ignore it. process.hrtime is not documented to use any
    // particular clock, but on Linux libuv implements it with clock_gettime(CLOCK_MONOTONIC).
    reloading: () =>
      send({ RELOADING: "1", MONOTONIC_USEC: (process.hrtime.bigint() / 1000n).toString() }),
    stopping: () => send({ STOPPING: "1" }),
    watchdogIntervalMs: () => watchdogIntervalMs(env, pid),
  };
}

function singleLine(value: string): string {
  // A newline would end the assignment and let the rest of the value forge another field.
  return value.replace(/[\r\n]+/g, " ").trim();
}

function watchdogIntervalMs(env: NodeJS.ProcessEnv, pid: number): number | undefined {
  const usecText = env.WATCHDOG_USEC;
  if (usecText === undefined || !/^\d+$/.test(usecText)) return undefined;
  const usec = Number(usecText);
  if (usec <= 0) return undefined;
  // WATCHDOG_PID names the process the watchdog is meant for; a child that inherited the
  // environment must not ping on the daemon's behalf.
  const watchdogPid = env.WATCHDOG_PID;
  if (watchdogPid !== undefined && watchdogPid !== "" && Number(watchdogPid) !== pid)
    return undefined;
  return Math.max(1, Math.floor(usec / 2 / 1000));
}
