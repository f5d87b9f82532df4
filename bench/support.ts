// Shared by the benchmarks: machine facts for the report header, order statistics, the
// daemon's /metrics as read from inside its namespace, and /proc readings of a process.
// Everything runs in a testbed's instance namespace through the integration harness; nothing
// here touches the host namespace's firewall or sends traffic to a metadata address.

import { readFile, readdir, readlink } from "node:fs/promises";
import { availableParallelism, cpus, loadavg, release } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { execa } from "execa";
import type { SpawnedProcess, Testbed } from "../test/integration/harness/index.js";
import { NODE } from "../test/integration/harness/netns.js";
import { startDaemon, until } from "../test/integration/support.js";

export const METRICS_PORT = 9877;

/** The header every benchmark prints first: numbers mean little without the machine. */
export async function machineFacts(): Promise<string> {
  const daemonNode = await execa(NODE, ["--version"], { reject: false });
  const model = cpus()[0]?.model.trim() ?? "unknown cpu";
  return [
    `machine: nproc=${availableParallelism()}, cpu=${model}`,
    `node: ${process.version} (benchmark), ${daemonNode.stdout.trim()} (${NODE}, runs the daemon)`,
    `kernel: ${release()}`,
    `load: ${loadAverage()} (other work on the machine shares its CPUs)`,
  ].join("\n");
}

/** 1, 5 and 15 minute load averages, printed with each report. */
export function loadAverage(): string {
  return loadavg()
    .map((value) => value.toFixed(2))
    .join(" ");
}

export interface Summary {
  readonly n: number;
  readonly median: number;
  readonly p90: number;
  readonly max: number;
  readonly min: number;
}

/** Median (mean of the middle two for even n) and nearest-rank p90; NaN when empty. */
export function summarize(values: readonly number[]): Summary {
  const sorted = [...values].sort((a, b) => a - b);
  const n = sorted.length;
  const at = (index: number): number => sorted[Math.min(n - 1, Math.max(0, index))] ?? Number.NaN;
  const median = n % 2 === 1 ? at((n - 1) / 2) : (at(n / 2 - 1) + at(n / 2)) / 2;
  return { n, median, p90: at(Math.ceil(0.9 * n) - 1), max: at(n - 1), min: at(0) };
}

export function fixed(value: number, digits = 1): string {
  return Number.isFinite(value) ? value.toFixed(digits) : "n/a";
}

/** Left-aligned first column, right-aligned others; rows are already strings. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((title, column) =>
    Math.max(title.length, ...rows.map((row) => (row[column] ?? "").length)),
  );
  const line = (cells: readonly string[]): string =>
    cells
      .map((cell, column) =>
        column === 0 ? cell.padEnd(widths[column] ?? 0) : cell.padStart(widths[column] ?? 0),
      )
      .join("  ")
      .trimEnd();
  return [line(header), ...rows.map(line)].join("\n");
}

/** GET from the daemon's endpoint inside the instance namespace; status 0 when nothing answered. */
export async function httpGet(
  testbed: Testbed,
  path: string,
): Promise<{ status: number; body: string }> {
  const result = await testbed.exec([
    "curl",
    "-sS",
    "--max-time",
    "5",
    "-o",
    "-",
    "-w",
    "\n%{http_code}",
    `http://127.0.0.1:${METRICS_PORT}${path}`,
  ]);
  const cut = result.stdout.lastIndexOf("\n");
  return { status: Number(result.stdout.slice(cut + 1)), body: result.stdout.slice(0, cut) };
}

/** One sample of the Prometheus text format. */
export interface Sample {
  readonly name: string;
  readonly labels: ReadonlyMap<string, string>;
  readonly value: number;
}

export function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (match?.[1] === undefined || match[3] === undefined) continue;
    const labels = new Map<string, string>();
    for (const pair of (match[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      if (pair[1] !== undefined && pair[2] !== undefined) labels.set(pair[1], pair[2]);
    }
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

export async function scrape(testbed: Testbed): Promise<Sample[]> {
  const reply = await httpGet(testbed, "/metrics");
  if (reply.status !== 200) throw new Error(`GET /metrics answered ${reply.status}: ${reply.body}`);
  return parseMetrics(reply.body);
}

export function sumOf(samples: readonly Sample[], name: string): number {
  return samples.filter((s) => s.name === name).reduce((total, s) => total + s.value, 0);
}

/** Sums of `name` grouped by the value of one label. */
export function byLabel(
  samples: readonly Sample[],
  name: string,
  label: string,
): Map<string, number> {
  const groups = new Map<string, number>();
  for (const sample of samples) {
    if (sample.name !== name) continue;
    const key = sample.labels.get(label) ?? "";
    groups.set(key, (groups.get(key) ?? 0) + sample.value);
  }
  return groups;
}

/**
 * Starts `imds-guard run` in the instance namespace and waits for /readyz. NOTIFY_SOCKET is
 * cleared so a benchmark run under a service manager never reports READY=1 for it.
 */
export async function startReadyDaemon(
  testbed: Testbed,
  configPath: string,
): Promise<SpawnedProcess> {
  const daemon = await startDaemon(testbed, configPath, [], { NOTIFY_SOCKET: "" });
  try {
    await until(
      "the daemon to report ready",
      async () => ((await httpGet(testbed, "/readyz")).status === 200 ? true : undefined),
      20_000,
      100,
    );
  } catch (error) {
    throw new Error(`${String(error)}\ndaemon output:\n${daemon.output()}`, { cause: error });
  }
  return daemon;
}

async function exeOf(pid: number): Promise<string | undefined> {
  return readlink(`/proc/${pid}/exe`).catch(() => undefined);
}

/** Direct children of a process, from every thread's children list. */
export async function childrenOf(pid: number): Promise<number[]> {
  const found = new Set<number>();
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  for (const task of tasks) {
    const text = await readFile(`/proc/${pid}/task/${task}/children`, "utf8").catch(() => "");
    for (const child of text.split(/\s+/).filter(Boolean)) found.add(Number(child));
  }
  return [...found];
}

/**
 * The node process behind a spawned handle. `ip netns exec` execs in place, so normally the
 * handle's PID already is node; should a wrapper stay in between, its node descendant is
 * found by walking /proc (at most a few levels, breadth first).
 */
export async function resolveNodePid(pid: number): Promise<number> {
  let level = [pid];
  for (let depth = 0; depth < 4 && level.length > 0; depth += 1) {
    for (const candidate of level) {
      if ((await exeOf(candidate))?.endsWith("/node") === true) return candidate;
    }
    const next: number[] = [];
    for (const candidate of level) next.push(...(await childrenOf(candidate)));
    level = next;
  }
  throw new Error(`no node process at or below PID ${pid}`);
}

export async function commOf(pid: number): Promise<string> {
  return (await readFile(`/proc/${pid}/comm`, "utf8").catch(() => "?")).trim();
}

/** VmRSS in KiB from /proc/<pid>/status; undefined once the process is gone. */
export async function rssKiB(pid: number): Promise<number | undefined> {
  const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => undefined);
  const match = status === undefined ? undefined : /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
  return match?.[1] === undefined ? undefined : Number(match[1]);
}

export { sleep };
