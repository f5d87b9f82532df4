// Proves the clean-up instead of asserting it: looks up each thing the demo created (by its exact
// name or PID) and reports whether it is still there. Only names this run created are ever
// looked at or, as a last retry, removed.

import { existsSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { execa } from "execa";
import { isAlive } from "../test/integration/harness/index.js";
import { removeSync } from "../test/integration/harness/exit-cleanup.js";

export interface Created {
  namespaces: string[];
  users: string[];
  groups: string[];
  dirs: string[];
  /** Long-running processes by what they were, e.g. "daemon" → PID. */
  processes: Map<string, number>;
}

export function nothingCreated(): Created {
  return { namespaces: [], users: [], groups: [], dirs: [], processes: new Map() };
}

export interface Inventory {
  readonly removed: Created;
  readonly remaining: Created;
}

async function namespaces(): Promise<Set<string>> {
  const result = await execa("ip", ["netns", "list"], { reject: false });
  // Lines look like "name" or "name (id: 3)".
  return new Set(result.stdout.split("\n").map((line) => line.split(" ")[0] ?? ""));
}

async function known(database: "passwd" | "group", name: string): Promise<boolean> {
  const result = await execa("getent", [database, name], { reject: false });
  return result.exitCode === 0;
}

async function split<T>(
  items: readonly T[],
  present: (item: T) => Promise<boolean>,
): Promise<{ gone: T[]; left: T[] }> {
  const gone: T[] = [];
  const left: T[] = [];
  for (const item of items) ((await present(item)) ? left : gone).push(item);
  return { gone, left };
}

export async function inventory(created: Created): Promise<Inventory> {
  const listed = await namespaces();
  const ns = await split(created.namespaces, (name) => Promise.resolve(listed.has(name)));
  const users = await split(created.users, (name) => known("passwd", name));
  const groups = await split(created.groups, (name) => known("group", name));
  const dirs = await split(created.dirs, (dir) => Promise.resolve(existsSync(dir)));
  const processes = await split([...created.processes], ([, pid]) => Promise.resolve(isAlive(pid)));
  return {
    removed: {
      namespaces: ns.gone,
      users: users.gone,
      groups: groups.gone,
      dirs: dirs.gone,
      processes: new Map(processes.gone),
    },
    remaining: {
      namespaces: ns.left,
      users: users.left,
      groups: groups.left,
      dirs: dirs.left,
      processes: new Map(processes.left),
    },
  };
}

export function isEmpty(created: Created): boolean {
  return (
    created.namespaces.length +
      created.users.length +
      created.groups.length +
      created.dirs.length +
      created.processes.size ===
    0
  );
}

/**
 * One more attempt at whatever the testbed's clean-up could not remove (say, userdel losing a
 * race for the passwd lock against a command that was still running when a signal came).
 */
export async function retryRemoval(remaining: Created): Promise<void> {
  await sleep(500);
  removeSync({
    pids: [...remaining.processes.values()],
    namespaces: remaining.namespaces,
    users: remaining.users,
    groups: remaining.groups,
    dirs: remaining.dirs,
  });
}

export function describe(created: Created): string[] {
  const lines: string[] = [];
  const list = (what: string, items: readonly string[]): void => {
    if (items.length > 0) lines.push(`${what}: ${items.join(", ")}`);
  };
  list(
    "processes",
    [...created.processes].map(([what, pid]) => `${what} (pid ${String(pid)})`),
  );
  list("network namespaces", created.namespaces);
  list("users", created.users);
  list("groups", created.groups);
  list("temp dirs", created.dirs);
  return lines;
}
