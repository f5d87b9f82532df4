// The outside view of drift: a watcher process running as a refused uid inside the instance
// namespace (scripts/exposure-watcher.mjs) reports when its connections to the metadata
// address started getting through after a drift command and when they were refused again.
// Only the testbed's namespaces are touched; the drift command runs there, never on the host.

import { chmod, copyFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { ProbeUser, SpawnedProcess, Testbed } from "../test/integration/harness/index.js";
import { NODE } from "../test/integration/harness/netns.js";

const WATCHER_SOURCE = fileURLToPath(new URL("./scripts/exposure-watcher.mjs", import.meta.url));

export interface ExposureWatcher {
  /**
   * Arms the watcher (it first checks the uid is blocked), runs `drift` and waits until the
   * uid's connections got through and were blocked again.
   */
  measure(drift: () => Promise<void>): Promise<Exposure>;
}

export interface Exposure {
  /** First attempt that got through → first attempt blocked again: the exposure window. */
  readonly windowMs: number;
  /** Drift command issued (before `ip netns exec` starts) → first attempt blocked again. */
  readonly fromCommandMs: number;
  /** When the guard was back, on process.hrtime.bigint()'s clock. */
  readonly closedAt: bigint;
  /** How the closing attempt ended: "refused" (a reset) or "timeout". */
  readonly closedBy: string;
  /** Attempts that got through during the window. */
  readonly opens: number;
}

export interface WatcherOptions {
  readonly user: ProbeUser;
  /** Gap between attempt starts; the resolution of both ends of the window. */
  readonly intervalMs: number;
  /** Give up on a round after this long. */
  readonly maxMs: number;
}

function parseLine(line: string | undefined): Record<string, unknown> {
  if (line === undefined) throw new Error("the exposure watcher ended");
  const value: unknown = JSON.parse(line);
  if (typeof value !== "object" || value === null) throw new Error(`watcher said ${line}`);
  return value as Record<string, unknown>;
}

function nanos(value: unknown, what: string): bigint {
  if (typeof value !== "string" || !/^\d+$/.test(value)) {
    throw new Error(`watcher reported ${what}=${String(value)}`);
  }
  return BigInt(value);
}

export async function startExposureWatcher(
  testbed: Testbed,
  options: WatcherOptions,
): Promise<ExposureWatcher> {
  // The testbed's script dir is world-readable and removed by its cleanup; the repo may not be.
  const script = join(testbed.scriptDir, "exposure-watcher.mjs");
  await copyFile(WATCHER_SOURCE, script);
  await chmod(script, 0o644);
  const handle: SpawnedProcess = await testbed.spawnInInstance(
    [
      NODE,
      script,
      "--host",
      testbed.targets.ipv4,
      "--port",
      "80",
      "--interval",
      String(options.intervalMs),
      "--max",
      String(options.maxMs),
    ],
    { user: options.user },
  );
  const ready = parseLine(await handle.nextLine(15_000));
  if (ready.ready !== true) throw new Error(`watcher did not start: ${handle.output()}`);

  return {
    async measure(drift) {
      handle.stdin.write("watch\n");
      const armed = parseLine(await handle.nextLine(5_000));
      if (armed.armed !== true) {
        throw new Error(`watcher not armed: ${JSON.stringify(armed)}`);
      }
      const issuedAt = process.hrtime.bigint();
      await drift();
      const report = parseLine(await handle.nextLine(options.maxMs + 5_000));
      if (typeof report.error === "string") throw new Error(`watcher: ${report.error}`);
      const openedAt = nanos(report.openedAt, "openedAt");
      const closedAt = nanos(report.closedAt, "closedAt");
      return {
        windowMs: Number(closedAt - openedAt) / 1e6,
        fromCommandMs: Number(closedAt - issuedAt) / 1e6,
        closedAt,
        closedBy: String(report.closedBy),
        opens: Number(report.opens),
      };
    },
  };
}
