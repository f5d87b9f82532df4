// Fetches the daemon's HTTP endpoints from inside the instance namespace (where it listens on
// loopback) and picks out the Prometheus samples the demo talks about. Never reaches the host's
// loopback: every request is made by a command run through the testbed.

import { existsSync } from "node:fs";
import type { Testbed } from "../test/integration/harness/index.js";

export interface Fetched {
  /** The command that fetched it, as a reader could type it inside the namespace. */
  readonly how: string;
  readonly ok: boolean;
  readonly body: string;
}

const CURL = "/usr/bin/curl";

/** curl when installed; otherwise node's fetch, so a minimal machine can still run the demo. */
export async function fetchInInstance(testbed: Testbed, url: string): Promise<Fetched> {
  if (existsSync(CURL)) {
    const result = await testbed.exec([CURL, "-sS", "--fail", "--max-time", "5", url]);
    return {
      how: `curl -sS ${url}`,
      ok: result.exitCode === 0,
      body: result.stdout || result.stderr,
    };
  }
  const script =
    "const r = await fetch(process.argv[1], { signal: AbortSignal.timeout(5000) });" +
    "process.stdout.write(await r.text()); process.exitCode = r.ok ? 0 : 1;";
  const result = await testbed.exec(["/usr/bin/node", "--input-type=module", "-e", script, url]);
  return {
    how: `node fetch ${url} (curl is not installed)`,
    ok: result.exitCode === 0,
    body: result.stdout || result.stderr,
  };
}

export interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
  /** The exposition line as served. */
  readonly line: string;
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parseSamples(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const match = SAMPLE.exec(line);
    if (match === null) continue;
    const [, name = "", labelText = "", valueText = ""] = match;
    const labels: Record<string, string> = {};
    for (const label of labelText.matchAll(LABEL)) {
      const [, key = "", value = ""] = label;
      labels[key] = value;
    }
    samples.push({ name, labels, value: Number(valueText), line });
  }
  return samples;
}

/** The series that show the guard at work; the rest of /metrics is process and runtime detail. */
export const EXCERPT = [
  "imds_guard_ready",
  "imds_guard_rules",
  "imds_guard_drift_detected_total",
  "imds_guard_drift_repair_duration_seconds_count",
  "imds_guard_drift_repair_duration_seconds_sum",
  "imds_guard_refused_packets_total",
  "imds_guard_allowed_packets_total",
] as const;

export function excerpt(samples: readonly Sample[]): Sample[] {
  return EXCERPT.flatMap((name) => samples.filter((sample) => sample.name === name));
}

/** Sum of a series over all its label sets (optionally only those with `family`). */
export function total(samples: readonly Sample[], name: string, family?: string): number {
  return samples
    .filter((s) => s.name === name && (family === undefined || s.labels.family === family))
    .reduce((sum, s) => sum + s.value, 0);
}
