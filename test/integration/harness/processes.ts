// Long-running child processes of a testbed (fake server, held connections, probers, the daemon
// under test). Each is tracked by PID from spawn until it is seen to exit, so cleanup can stop
// exactly these processes; nothing here ever signals a process it did not start.

import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import type { Writable } from "node:stream";
import { execa } from "execa";

export interface CommandResult {
  /** Undefined when the process was killed by a signal (see `signal`). */
  readonly exitCode: number | undefined;
  readonly signal?: string;
  readonly stdout: string;
  readonly stderr: string;
}

export interface SpawnOptions {
  readonly cwd?: string;
  readonly env?: Readonly<Record<string, string>>;
}

export interface SpawnedProcess {
  readonly pid: number;
  readonly stdin: Writable;
  /** Resolves when the process has exited, however that happened. */
  readonly exited: Promise<CommandResult>;
  /** Everything written to stdout and stderr so far, interleaved in arrival order. */
  output(): string;
  /** Next complete stdout line, in order; undefined at end of stream. Rejects on timeout. */
  nextLine(timeoutMs?: number): Promise<string | undefined>;
  /** Resolves with the first stdout/stderr line (past or future) matching `pattern`. */
  waitForOutput(pattern: RegExp | string, timeoutMs?: number): Promise<string>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  stop(graceMs?: number): Promise<CommandResult>;
}

export const DEFAULT_GRACE_MS = 2000;

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A zombie still answers signal 0 but is as good as gone.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // exited in the meantime
  }
}

/** Stops a PID that is not our direct child (e.g. a stray found by `ip netns pids`). */
export async function killPid(pid: number, graceMs = DEFAULT_GRACE_MS): Promise<void> {
  signal(pid, "SIGTERM");
  const deadline = Date.now() + graceMs;
  while (isAlive(pid) && Date.now() < deadline) await sleep(25);
  if (!isAlive(pid)) return;
  signal(pid, "SIGKILL");
  const hardDeadline = Date.now() + 5000;
  while (isAlive(pid) && Date.now() < hardDeadline) await sleep(25);
}

type Waiter = (line: string | undefined) => void;

/** Splits a stream into lines and hands them out in order. */
class LineQueue {
  readonly #lines: string[] = [];
  readonly #waiters: Waiter[] = [];
  #partial = "";
  #ended = false;

  push(chunk: string): void {
    const parts = (this.#partial + chunk).split("\n");
    this.#partial = parts.pop() ?? "";
    for (const line of parts) this.#deliver(line);
  }

  end(): void {
    if (this.#partial !== "") this.#deliver(this.#partial);
    this.#partial = "";
    this.#ended = true;
    for (const waiter of this.#waiters.splice(0)) waiter(undefined);
  }

  #deliver(line: string): void {
    const waiter = this.#waiters.shift();
    if (waiter) waiter(line);
    else this.#lines.push(line);
  }

  next(timeoutMs: number): Promise<string | undefined> {
    const ready = this.#lines.shift();
    if (ready !== undefined) return Promise.resolve(ready);
    if (this.#ended) return Promise.resolve(undefined);
    return new Promise((resolve, reject) => {
      const waiter: Waiter = (line) => {
        clearTimeout(timer);
        resolve(line);
      };
      const timer = setTimeout(() => {
        const index = this.#waiters.indexOf(waiter);
        if (index >= 0) this.#waiters.splice(index, 1);
        reject(new Error(`no output line within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }
}

export class ProcessTracker {
  readonly #live = new Map<number, SpawnedProcess>();

  pids(): number[] {
    return [...this.#live.keys()];
  }

  /** Starts argv[0] with argv[1..]; no shell is involved. */
  async spawn(argv: readonly string[], options: SpawnOptions = {}): Promise<SpawnedProcess> {
    const [file, ...args] = argv;
    if (file === undefined) throw new Error("spawn: empty argv");
    const subprocess = execa(file, args, {
      reject: false,
      buffer: false,
      stdin: "pipe",
      stdout: "pipe",
      stderr: "pipe",
      cwd: options.cwd,
      env: options.env,
    });

    let stdout = "";
    let stderr = "";
    let combined = "";
    const stdoutLines = new LineQueue();
    const watchers = new Set<(line: string) => void>();
    const watch = (stream: "out" | "err") => {
      let partial = "";
      return (chunk: string) => {
        if (stream === "out") stdout += chunk;
        else stderr += chunk;
        combined += chunk;
        const parts = (partial + chunk).split("\n");
        partial = parts.pop() ?? "";
        for (const line of parts) for (const watcher of watchers) watcher(line);
      };
    };
    subprocess.stdout.setEncoding("utf8");
    subprocess.stderr.setEncoding("utf8");
    const onOut = watch("out");
    subprocess.stdout.on("data", (chunk: string) => {
      onOut(chunk);
      stdoutLines.push(chunk);
    });
    subprocess.stdout.on("end", () => {
      stdoutLines.end();
    });
    subprocess.stderr.on("data", watch("err"));
    // EPIPE when writing to a process that already died is expected in teardown races.
    subprocess.stdin.on("error", () => undefined);

    const exited: Promise<CommandResult> = subprocess.then((result) => ({
      exitCode: result.exitCode,
      ...(result.signal === undefined ? {} : { signal: result.signal }),
      stdout,
      stderr: stderr === "" ? (result.message ?? "") : stderr,
    }));

    const pid = subprocess.pid;
    if (pid === undefined) {
      const result = await exited;
      throw new Error(`could not start ${argv.join(" ")}: ${result.stderr}`);
    }

    // Once reaped, the PID may be reused by anyone: never signal it again. 'exit' fires in the
    // same tick as the reap, whereas `exited` also waits for the output streams to close.
    let gone = false;
    subprocess.once("exit", () => {
      gone = true;
    });
    const isGone = () => gone;

    const handle: SpawnedProcess = {
      pid,
      stdin: subprocess.stdin,
      exited,
      output: () => combined,
      nextLine: (timeoutMs = 10_000) => stdoutLines.next(timeoutMs),
      waitForOutput: (pattern, timeoutMs = 10_000) =>
        waitForOutput(combined, watchers, pattern, timeoutMs, exited),
      stop: async (graceMs = DEFAULT_GRACE_MS) => {
        if (isGone()) return exited;
        signal(pid, "SIGTERM");
        const timedOut = Symbol("timeout");
        const grace = new AbortController();
        const first = await Promise.race([
          exited,
          sleep(graceMs, timedOut, { signal: grace.signal }).catch(() => undefined),
        ]);
        grace.abort();
        if (first === timedOut && !isGone()) signal(pid, "SIGKILL");
        return exited;
      },
    };
    this.#live.set(pid, handle);
    void exited.then(() => this.#live.delete(pid));
    return handle;
  }

  async stopAll(graceMs = DEFAULT_GRACE_MS): Promise<void> {
    await Promise.all([...this.#live.values()].map((handle) => handle.stop(graceMs)));
  }
}

function matches(line: string, pattern: RegExp | string): boolean {
  return typeof pattern === "string" ? line.includes(pattern) : pattern.test(line);
}

function waitForOutput(
  soFar: string,
  watchers: Set<(line: string) => void>,
  pattern: RegExp | string,
  timeoutMs: number,
  exited: Promise<CommandResult>,
): Promise<string> {
  const seen = soFar.split("\n").find((line) => matches(line, pattern));
  if (seen !== undefined) return Promise.resolve(seen);
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      watchers.delete(watcher);
    };
    const watcher = (line: string) => {
      if (!matches(line, pattern)) return;
      done();
      resolve(line);
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`no output matching ${String(pattern)} within ${timeoutMs} ms`));
    }, timeoutMs);
    watchers.add(watcher);
    void exited.then((result) => {
      if (!watchers.has(watcher)) return;
      done();
      reject(
        new Error(
          `process exited (code ${String(result.exitCode)}) before output matched ` +
            `${String(pattern)}:\n${result.stdout}${result.stderr}`,
        ),
      );
    });
  });
}
