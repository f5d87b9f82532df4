// Last-resort teardown for testbeds still alive when the test process dies (crash, unhandled
// rejection, SIGTERM from the runner). Synchronous because 'exit' handlers cannot await. It
// only ever removes what a live testbed reports as its own: PIDs, namespaces, principals, dirs.

import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";

export interface Leftovers {
  readonly pids: readonly number[];
  readonly namespaces: readonly string[];
  readonly users: readonly string[];
  readonly groups: readonly string[];
  readonly dirs: readonly string[];
}

const live = new Map<string, () => Leftovers>();
let installed = false;

const FATAL_SIGNALS: readonly NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

/** Registers a testbed; the returned function unregisters it after an orderly cleanup. */
export function registerForExit(prefix: string, snapshot: () => Leftovers): () => void {
  install();
  live.set(prefix, snapshot);
  return () => {
    live.delete(prefix);
  };
}

function install(): void {
  if (installed) return;
  installed = true;
  process.on("exit", cleanupAllSync);
  for (const signal of FATAL_SIGNALS) {
    process.once(signal, () => {
      cleanupAllSync();
      // Re-raise with the default disposition unless someone else has taken charge of it.
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    });
  }
}

function cleanupAllSync(): void {
  for (const [prefix, snapshot] of [...live]) {
    live.delete(prefix);
    removeSync(snapshot());
  }
}

function quiet(file: string, args: readonly string[]): string {
  try {
    return execFileSync(file, args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  } catch {
    return "";
  }
}

function killSync(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // already gone
  }
}

export function removeSync(leftovers: Leftovers): void {
  for (const pid of leftovers.pids) killSync(pid);
  for (const ns of leftovers.namespaces) {
    for (const pid of quiet("ip", ["netns", "pids", ns]).split(/\s+/).filter(Boolean)) {
      killSync(Number(pid));
    }
  }
  for (const ns of leftovers.namespaces) quiet("ip", ["netns", "del", ns]);
  // -f: a just-killed process may not be reaped yet, which plain userdel refuses.
  for (const user of leftovers.users) quiet("userdel", ["-f", user]);
  for (const group of leftovers.groups) quiet("groupdel", [group]);
  for (const dir of leftovers.dirs) rmSync(dir, { recursive: true, force: true });
}
