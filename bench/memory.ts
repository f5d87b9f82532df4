// Steady-state memory of `imds-guard run` against a bare Node process started the same way in
// the same run, and how it grows while drift checks keep running. Two daemons, each in its own
// throwaway testbed: the default config (2 s drift check), and a stress one at the 100 ms
// minimum with our chain flushed every second so the repair path runs too. Prints, never asserts.
//
// run: node --import tsx bench/memory.ts   (npm run build first)

import type { Testbed } from "../test/integration/harness/index.js";
import { createTestbed } from "../test/integration/harness/index.js";
import { NODE } from "../test/integration/harness/netns.js";
import { makeConfigDir } from "../test/integration/support.js";
import {
  childrenOf,
  commOf,
  fixed,
  loadAverage,
  machineFacts,
  resolveNodePid,
  rssKiB,
  scrape,
  sleep,
  startReadyDaemon,
  sumOf,
  summarize,
  table,
} from "./support.js";

const STEADY_AT_S = 10;
const END_AT_S = 30;
const SAMPLE_EVERY_MS = 250;
/** RSS readings are the median of the samples in the second before: RSS moves with every GC. */
const RSS_WINDOW_S = 1;
/** /metrics is read once a second; the heap reading is the lowest of the last 5 s. */
const SCRAPE_EVERY_S = 1;
const HEAP_WINDOW_S = 5;
const STRESS_DRIFT_EVERY_S = 1;

interface RssSample {
  readonly atS: number;
  readonly kib: number;
  readonly monitorKib?: number;
}

interface MetricsSample {
  readonly atS: number;
  readonly heapKib: number;
  readonly reconciles: number;
}

interface Subject {
  readonly label: string;
  readonly pid: number;
  /** The daemon's `nft monitor` child, counted separately. */
  readonly monitorPid?: number;
  readonly testbed?: Testbed;
  readonly rss: RssSample[];
  readonly metrics: MetricsSample[];
}

interface Bed {
  testbed?: Testbed;
  removeConfig?: () => Promise<void>;
}

async function bedWithConfig(bed: Bed, yaml: string): Promise<{ testbed: Testbed; path: string }> {
  const testbed = await createTestbed();
  bed.testbed = testbed;
  const configs = await makeConfigDir();
  bed.removeConfig = () => configs.remove();
  return { testbed, path: await configs.write("config.yaml", yaml) };
}

async function nftMonitorOf(pid: number): Promise<number | undefined> {
  for (const child of await childrenOf(pid)) {
    if ((await commOf(child)) === "nft") return child;
  }
  return undefined;
}

function within<T extends { atS: number }>(
  samples: readonly T[],
  atS: number,
  windowS: number,
): T[] {
  return samples.filter((s) => s.atS > atS - windowS && s.atS <= atS);
}

function rssAt(subject: Subject, atS: number, pick: (s: RssSample) => number | undefined): number {
  const values = within(subject.rss, atS, RSS_WINDOW_S)
    .map(pick)
    .filter((v): v is number => v !== undefined);
  return summarize(values).median;
}

function heapFloorAt(subject: Subject, atS: number): number {
  return summarize(within(subject.metrics, atS, HEAP_WINDOW_S).map((s) => s.heapKib)).min;
}

/** The counter as last read at or before atS. */
function reconcilesAt(subject: Subject, atS: number): number {
  return subject.metrics.filter((s) => s.atS <= atS).at(-1)?.reconciles ?? Number.NaN;
}

const mib = (kib: number): string => fixed(kib / 1024);
const signed = (kib: number): string =>
  Number.isFinite(kib) ? `${kib >= 0 ? "+" : ""}${mib(kib)}` : "-";

async function sampleRss(subject: Subject, atS: number): Promise<void> {
  const kib = await rssKiB(subject.pid);
  if (kib === undefined) throw new Error(`${subject.label} (PID ${subject.pid}) is gone`);
  const monitorKib =
    subject.monitorPid === undefined ? undefined : await rssKiB(subject.monitorPid);
  subject.rss.push({ atS, kib, ...(monitorKib === undefined ? {} : { monitorKib }) });
}

async function sampleMetrics(subject: Subject, atS: number): Promise<void> {
  if (subject.testbed === undefined) return;
  const samples = await scrape(subject.testbed);
  subject.metrics.push({
    atS,
    heapKib: sumOf(samples, "nodejs_heap_size_used_bytes") / 1024,
    reconciles: sumOf(samples, "imds_guard_reconcile_total"),
  });
}

function report(subjects: readonly Subject[], drifts: number): string {
  const baseline = subjects.find((s) => s.testbed === undefined);
  const baseSteady =
    baseline === undefined ? Number.NaN : rssAt(baseline, STEADY_AT_S, (s) => s.kib);
  const rows = subjects.map((subject) => {
    const steady = rssAt(subject, STEADY_AT_S, (s) => s.kib);
    const end = rssAt(subject, END_AT_S, (s) => s.kib);
    const monitor = rssAt(subject, STEADY_AT_S, (s) => s.monitorKib);
    const reconciles = reconcilesAt(subject, END_AT_S) - reconcilesAt(subject, STEADY_AT_S);
    return [
      subject.label,
      String(subject.pid),
      mib(steady),
      fixed(steady / baseSteady, 2),
      mib(end),
      signed(end - steady),
      mib(Math.max(...subject.rss.map((s) => s.kib))),
      Number.isFinite(reconciles) ? String(reconciles) : "-",
      signed(heapFloorAt(subject, END_AT_S) - heapFloorAt(subject, STEADY_AT_S)),
      Number.isFinite(monitor) ? mib(monitor) : "-",
    ];
  });
  const growth = `${END_AT_S - STEADY_AT_S}s`;
  return [
    "memory: VmRSS of each node process (/proc/<pid>/status), MiB",
    `${drifts} flushes of IMDS-GUARD hit the stress daemon`,
    "",
    table(
      [
        "process",
        "pid",
        `rss@${STEADY_AT_S}s`,
        "x_baseline",
        `rss@${END_AT_S}s`,
        `growth_${growth}`,
        "peak",
        `reconciles_${growth}`,
        `heap_floor_growth_${growth}`,
        "nft_monitor_rss",
      ],
      rows,
    ),
    "",
    "t=0: all three processes started together. pid is the node process itself (`ip netns exec`",
    "  execs in place; checked via /proc/<pid>/exe). x_baseline = rss / baseline rss at t=10 s.",
    `rss@t: median of the samples (every ${SAMPLE_EVERY_MS} ms) in the second before t.`,
    `reconciles: imds_guard_reconcile_total from /metrics between t=${STEADY_AT_S} s and t=${END_AT_S} s.`,
    `heap_floor_growth: lowest nodejs_heap_size_used_bytes (read every ${SCRAPE_EVERY_S} s) in the ${HEAP_WINDOW_S} s`,
    `  before t=${END_AT_S} s minus the same before t=${STEADY_AT_S} s. V8 frees old-space garbage lazily,`,
    "  so this and rss growth move with GC timing: compare runs. A leak shows as growth that",
    "  repeats run after run and scales with the reconcile count; 20 s rules out only a fast one.",
    "nft_monitor_rss: the daemon's `nft monitor` child, not included in its rss.",
    `load at the end: ${loadAverage()}`,
  ].join("\n");
}

async function main(): Promise<void> {
  console.log(await machineFacts());
  console.log("");
  const defaultBed: Bed = {};
  const stressBed: Bed = {};
  try {
    const common = "allow:\n  users: [root]\nlog_denied: false\n";
    const plain = await bedWithConfig(defaultBed, `backend: nft\n${common}`);
    const stress = await bedWithConfig(
      stressBed,
      `backend: nft\n${common}drift_check_interval: 100ms\n`,
    );
    // All three start together and the clock starts with them; the baseline goes through the
    // same `ip netns exec` as the daemons.
    const started = process.hrtime.bigint();
    const elapsedS = (): number => Number(process.hrtime.bigint() - started) / 1e9;
    const [bare, plainDaemon, stressDaemon] = await Promise.all([
      plain.testbed.spawnInInstance([NODE, "-e", "setInterval(() => {}, 1000)"]),
      startReadyDaemon(plain.testbed, plain.path),
      startReadyDaemon(stress.testbed, stress.path),
    ]);

    const subjects: Subject[] = [];
    for (const [label, handle, testbed] of [
      ["imds-guard, defaults (2 s drift check)", plainDaemon, plain.testbed],
      ["imds-guard, 100 ms drift check + a flush every 1 s", stressDaemon, stress.testbed],
      ["bare node -e setInterval (baseline)", bare, undefined],
    ] as const) {
      const pid = await resolveNodePid(handle.pid);
      const monitorPid = testbed === undefined ? undefined : await nftMonitorOf(pid);
      subjects.push({
        label,
        pid,
        ...(monitorPid === undefined ? {} : { monitorPid }),
        ...(testbed === undefined ? {} : { testbed }),
        rss: [],
        metrics: [],
      });
    }

    let nextDrift = STRESS_DRIFT_EVERY_S;
    let nextScrape = 0;
    let drifts = 0;
    const maxSteps = Math.ceil((END_AT_S * 1000) / SAMPLE_EVERY_MS) + 10;
    for (let step = 0; step < maxSteps && elapsedS() <= END_AT_S; step += 1) {
      for (const subject of subjects) await sampleRss(subject, elapsedS());
      if (elapsedS() >= nextScrape) {
        for (const subject of subjects) await sampleMetrics(subject, elapsedS());
        nextScrape += SCRAPE_EVERY_S;
      }
      if (elapsedS() >= nextDrift) {
        const flushed = await stress.testbed.exec(["iptables-nft", "-w", "-F", "IMDS-GUARD"]);
        if (flushed.exitCode !== 0) throw new Error(`drift command failed: ${flushed.stderr}`);
        drifts += 1;
        nextDrift += STRESS_DRIFT_EVERY_S;
      }
      await sleep(SAMPLE_EVERY_MS);
    }
    for (const subject of subjects) await sampleMetrics(subject, elapsedS());
    console.log(report(subjects, drifts));
  } finally {
    // Every testbed is cleaned up even when another one's cleanup fails.
    for (const bed of [defaultBed, stressBed]) {
      await bed.testbed?.cleanup().catch((error: unknown) => {
        process.stderr.write(`cleanup incomplete: ${String(error)}\n`);
        process.exitCode = 1;
      });
      await bed.removeConfig?.().catch(() => undefined);
    }
  }
}

await main();
