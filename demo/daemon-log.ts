// Reads the daemon's pino JSON lines as they arrive, so the demo can quote what the daemon
// itself measured (repairMs, its status line) instead of guessing. Read-only over the output
// the harness already collects; it never talks to the daemon.

import { setTimeout as sleep } from "node:timers/promises";
import type { SpawnedProcess } from "../test/integration/harness/index.js";

export interface LogLine {
  readonly msg: string;
  /** pino's epoch milliseconds. */
  readonly time: number;
  readonly level: number;
  readonly [field: string]: unknown;
}

function parse(line: string): LogLine | undefined {
  try {
    const value: unknown = JSON.parse(line);
    if (typeof value !== "object" || value === null) return undefined;
    const record = value as Record<string, unknown>;
    if (typeof record.msg !== "string" || typeof record.time !== "number") return undefined;
    return record as LogLine;
  } catch {
    return undefined;
  }
}

export class DaemonLog {
  readonly #daemon: SpawnedProcess;

  constructor(daemon: SpawnedProcess) {
    this.#daemon = daemon;
  }

  lines(): LogLine[] {
    return this.#daemon
      .output()
      .split("\n")
      .map(parse)
      .filter((line): line is LogLine => line !== undefined);
  }

  /** A position to wait from: only lines logged after it count. */
  mark(): number {
    return this.lines().length;
  }

  /**
   * The first line after `from` that matches; undefined when none came within timeoutMs or
   * the daemon exited first (its output then says why).
   */
  async waitFor(
    match: (line: LogLine) => boolean,
    from: number,
    timeoutMs: number,
    exited: () => boolean,
  ): Promise<LogLine | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.lines().slice(from).find(match);
      if (found !== undefined) return found;
      if (exited() || Date.now() > deadline) return undefined;
      await sleep(10);
    }
  }

  /** The last lines of everything the daemon printed, for a failure report. */
  tail(count = 8): string {
    return this.#daemon.output().trimEnd().split("\n").slice(-count).join("\n");
  }
}
