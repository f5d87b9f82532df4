// Owns log output: pino JSON lines on a stream the caller passes in, with a syslog "<N>" priority
// prefix when stdout is the journal, and a throttle for repeated identical errors.
// Must never write anywhere but the given stream, and must never block on a slow consumer longer
// than one write.

import { fstatSync } from "node:fs";

import { multistream, pino, type Logger, type StreamEntry } from "pino";

export interface LoggerOptions {
  level?: string;
  stream?: NodeJS.WritableStream;
  env?: NodeJS.ProcessEnv;
}

// sd-daemon(3) priorities, which journald strips from the start of each line it reads.
const JOURNAL_PRIORITIES: readonly {
  level: "trace" | "info" | "warn" | "error";
  prefix: string;
}[] = [
  { level: "trace", prefix: "<7>" }, // trace, debug
  { level: "info", prefix: "<6>" },
  { level: "warn", prefix: "<4>" },
  { level: "error", prefix: "<3>" }, // error, fatal
];

export function createLogger(opts: LoggerOptions = {}): Logger {
  const stream = opts.stream ?? process.stdout;
  const env = opts.env ?? process.env;
  const options = {
    level: opts.level ?? "info",
    // pid stays so lines from a restarted daemon can be told apart; hostname is the same on
    // every line of a single VM.
    base: { pid: process.pid },
  };
  if (!writesToJournal(stream, env)) return pino(options, stream);

  // With dedupe, multistream hands each line only to the entry with the highest level not above
  // the line's level, so every line gets exactly one prefix. Each write is one whole line.
  const entries: StreamEntry[] = JOURNAL_PRIORITIES.map(({ level, prefix }) => ({
    level,
    stream: { write: (line: string) => stream.write(prefix + line) },
  }));
  return pino(options, multistream(entries, { dedupe: true }));
}

// JOURNAL_STREAM is inherited by children whose output may go elsewhere, so when the stream
// has a file descriptor we check it is the one systemd connected to the journal, as
// systemd.exec(5) recommends. A stream without a descriptor (tests) trusts the variable.
function writesToJournal(stream: NodeJS.WritableStream, env: NodeJS.ProcessEnv): boolean {
  const journal = env.JOURNAL_STREAM;
  if (journal === undefined || journal === "") return false;
  const fd = (stream as { fd?: unknown }).fd;
  if (typeof fd !== "number") return true;
  try {
    const stat = fstatSync(fd, { bigint: true });
    return journal === `${stat.dev.toString()}:${stat.ino.toString()}`;
  } catch {
    return false;
  }
}

export interface ThrottleDecision {
  /** Whether to log this occurrence. */
  log: boolean;
  /** When log is true: how many occurrences of this key were dropped since the last one logged. */
  suppressed: number;
}

export interface Throttle {
  /** True the first time a key is seen, then at most once per window per key. */
  shouldLog(key: string): boolean;
  /** Like shouldLog, and also says how many were dropped, to put on the line that is logged. */
  check(key: string): ThrottleDecision;
  /** Occurrences of key dropped since it was last logged. */
  suppressed(key: string): number;
}

// Keys are usually error messages, which may embed changing details; cap the table so a flood
// of distinct messages cannot grow it without bound.
const MAX_KEYS = 1000;

export function createThrottle(windowMs: number, now: () => number = Date.now): Throttle {
  const seen = new Map<string, { lastLoggedAt: number; suppressed: number }>();

  const check = (key: string): ThrottleDecision => {
    const t = now();
    const entry = seen.get(key);
    if (entry !== undefined && t - entry.lastLoggedAt < windowMs) {
      entry.suppressed += 1;
      return { log: false, suppressed: 0 };
    }
    const suppressed = entry?.suppressed ?? 0;
    // Re-inserting moves the key to the end, so the oldest-logged key is evicted first.
    seen.delete(key);
    seen.set(key, { lastLoggedAt: t, suppressed: 0 });
    if (seen.size > MAX_KEYS) {
      const oldest = seen.keys().next();
      if (oldest.done !== true) seen.delete(oldest.value);
    }
    return { log: true, suppressed };
  };

  return {
    check,
    shouldLog: (key) => check(key).log,
    suppressed: (key) => seen.get(key)?.suppressed ?? 0,
  };
}
