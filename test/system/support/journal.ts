// Reads a unit's journal in the container as `journalctl -o json` entries, and picks out the
// daemon's own lines (pino JSON on stdout) with the syslog priority journald assigned them.

import type { Machine } from "./machine.js";

/** The journal fields the test looks at; journalctl -o json gives every value as a string. */
export interface JournalEntry {
  readonly MESSAGE?: unknown;
  readonly PRIORITY?: string;
  readonly _PID?: string;
  readonly _TRANSPORT?: string;
  readonly SYSLOG_IDENTIFIER?: string;
  /** On the manager's messages about the unit. */
  readonly INVOCATION_ID?: string;
  /** On the unit's own output. */
  readonly _SYSTEMD_INVOCATION_ID?: string;
  readonly __MONOTONIC_TIMESTAMP?: string;
}

export interface DaemonLine {
  readonly entry: JournalEntry;
  readonly pid: number;
  /** pino's numeric level: 30 info, 40 warn, 50 error. */
  readonly level: number;
  readonly msg: string;
  readonly invocation: string;
  readonly monotonicUsec: bigint;
}

export async function unitJournal(machine: Machine, unit: string): Promise<JournalEntry[]> {
  const out = await machine.mustExec(["journalctl", "--unit", unit, "--output=json", "--no-pager"]);
  return out
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => JSON.parse(line) as JournalEntry);
}

/** The manager's (PID 1) messages, as text. */
export function managerMessages(entries: readonly JournalEntry[]): JournalEntry[] {
  return entries.filter((e) => e._PID === "1" && typeof e.MESSAGE === "string");
}

export function daemonLines(entries: readonly JournalEntry[]): DaemonLine[] {
  const lines: DaemonLine[] = [];
  for (const entry of entries) {
    if (entry._TRANSPORT !== "stdout" || typeof entry.MESSAGE !== "string") continue;
    let parsed: { level?: unknown; msg?: unknown; pid?: unknown };
    try {
      parsed = JSON.parse(entry.MESSAGE) as typeof parsed;
    } catch {
      continue;
    }
    if (typeof parsed.level !== "number" || typeof parsed.msg !== "string") continue;
    lines.push({
      entry,
      pid: Number(entry._PID),
      level: parsed.level,
      msg: parsed.msg,
      invocation: entry._SYSTEMD_INVOCATION_ID ?? "",
      monotonicUsec: BigInt(entry.__MONOTONIC_TIMESTAMP ?? "0"),
    });
  }
  return lines;
}

/** The sd-daemon(3) prefix the logger should put on a line of this pino level. */
export function expectedPriority(level: number): string {
  if (level >= 50) return "3";
  if (level >= 40) return "4";
  if (level >= 30) return "6";
  return "7";
}
