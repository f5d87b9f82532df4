// Client traffic from inside the instance namespace, as a chosen uid/gid: one-shot connects, a
// held keep-alive connection, and a continuous prober. The work happens in scripts/probe.mjs;
// this side only builds argv, parses its JSON lines and never reports a guess as a result.

import { join } from "node:path";
import { NODE, inNamespace, runInNamespace } from "./netns.js";
import type { ProbeUser } from "./principals.js";
import type { ProcessTracker, SpawnedProcess } from "./processes.js";

export type Family = "ipv4" | "ipv6";
export type Protocol = "tcp" | "udp";

/**
 * "200": HTTP 200 (TCP) or the datagram came back (UDP). "refused": ECONNREFUSED or
 * ECONNRESET, i.e. a RST or ICMP port-unreachable. "timeout": nothing within timeoutMs.
 * "error": anything else (errno or HTTP status in `detail`).
 */
export type ProbeResult = "200" | "refused" | "timeout" | "error";

export interface Addresses {
  readonly ipv4: string;
  readonly ipv6: string;
}

export interface ConnectOptions {
  /** Run the probe as this identity; as root when omitted. */
  readonly user?: ProbeUser;
  readonly family: Family;
  /** Default 80 for TCP, the UDP echo port (53) for UDP. */
  readonly port?: number;
  /** Default: the metadata address of `family`. */
  readonly host?: string;
  readonly protocol?: Protocol;
  /** Default 1000. */
  readonly timeoutMs?: number;
}

export interface ConnectOutcome {
  readonly result: ProbeResult;
  /** Measured inside the probe from first packet to outcome; excludes node start-up. */
  readonly ms: number;
  readonly detail?: string;
  /** `address:port` the fake server says it answered on (differs after a DNAT detour). */
  readonly servedBy?: string;
}

export type HoldOptions = Omit<ConnectOptions, "protocol">;

export interface HeldConnection {
  /** PID of the probe holding the socket (inside the instance namespace). */
  readonly pid: number;
  readonly first: ConnectOutcome;
  /** Another GET on the same socket; never opens a new connection. */
  next(): Promise<ConnectOutcome>;
  close(): Promise<void>;
}

export interface ProberOptions extends ConnectOptions {
  /** Gap between the starts of consecutive attempts, default 20. Attempts never overlap. */
  readonly intervalMs?: number;
}

export interface ProberCounts {
  "200": number;
  refused: number;
  timeout: number;
  error: number;
}

export interface Prober {
  readonly pid: number;
  /** Finishes the attempt in flight and returns how every attempt ended. */
  stop(): Promise<ProberCounts>;
  /** The first few non-200 outcomes as "result: detail", once stopped. */
  details(): readonly string[];
}

export interface ProbeContext {
  readonly instanceNs: string;
  /** World-readable copy of scripts/; also the cwd, since the repo may sit under /root. */
  readonly scriptDir: string;
  readonly tracker: ProcessTracker;
  readonly targets: Addresses;
}

export const UDP_ECHO_PORT = 53;
const DEFAULT_TIMEOUT_MS = 1000;
/** Node start-up and setpriv on a loaded CI box, on top of the probe's own timeout. */
const STARTUP_MARGIN_MS = 15_000;

const RESULTS: readonly ProbeResult[] = ["200", "refused", "timeout", "error"];

/** `node probe.mjs <mode> ...`, still to be wrapped into the namespace and identity. */
function probeArgv(ctx: ProbeContext, mode: string, options: ProberOptions): string[] {
  const protocol = options.protocol ?? "tcp";
  const port = options.port ?? (protocol === "udp" ? UDP_ECHO_PORT : 80);
  const args = [
    join(ctx.scriptDir, "probe.mjs"),
    mode,
    "--host",
    options.host ?? ctx.targets[options.family],
    "--port",
    String(port),
    "--protocol",
    protocol,
    "--timeout",
    String(options.timeoutMs ?? DEFAULT_TIMEOUT_MS),
  ];
  if (options.intervalMs !== undefined) args.push("--interval", String(options.intervalMs));
  return [NODE, ...args];
}

function spawnProbe(
  ctx: ProbeContext,
  mode: string,
  options: ProberOptions,
): Promise<SpawnedProcess> {
  const argv = inNamespace(ctx.instanceNs, probeArgv(ctx, mode, options), options.user);
  return ctx.tracker.spawn(argv, { cwd: ctx.scriptDir });
}

function parseJson(line: string | undefined): Record<string, unknown> | undefined {
  if (line === undefined) return undefined;
  try {
    const value: unknown = JSON.parse(line);
    return typeof value === "object" && value !== null
      ? (value as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

function isResult(value: unknown): value is ProbeResult {
  return RESULTS.includes(value as ProbeResult);
}

function parseOutcome(line: string | undefined): ConnectOutcome | undefined {
  const json = parseJson(line);
  if (json === undefined || !isResult(json.result) || typeof json.ms !== "number") return undefined;
  return {
    result: json.result,
    ms: json.ms,
    ...(typeof json.detail === "string" ? { detail: json.detail } : {}),
    ...(typeof json.servedBy === "string" ? { servedBy: json.servedBy } : {}),
  };
}

function probeFailure(what: string, output: string): ConnectOutcome {
  return { result: "error", ms: 0, detail: `probe failed: ${what}: ${output.trim()}` };
}

export async function connect(ctx: ProbeContext, options: ConnectOptions): Promise<ConnectOutcome> {
  const result = await runInNamespace(ctx.instanceNs, probeArgv(ctx, "once", options), {
    ...(options.user === undefined ? {} : { user: options.user }),
    cwd: ctx.scriptDir,
    timeoutMs: (options.timeoutMs ?? DEFAULT_TIMEOUT_MS) + STARTUP_MARGIN_MS,
  });
  const outcome = parseOutcome(result.stdout.trim().split("\n").pop());
  return outcome ?? probeFailure(`exit ${String(result.exitCode)}`, result.stderr + result.stdout);
}

async function nextOutcome(handle: SpawnedProcess, timeoutMs: number): Promise<ConnectOutcome> {
  try {
    const line = await handle.nextLine(timeoutMs + STARTUP_MARGIN_MS);
    return parseOutcome(line) ?? probeFailure(`unexpected line ${String(line)}`, handle.output());
  } catch (error) {
    return probeFailure(String(error), handle.output());
  }
}

export async function holdConnection(
  ctx: ProbeContext,
  options: HoldOptions,
): Promise<HeldConnection> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const handle = await spawnProbe(ctx, "hold", options);
  const first = await nextOutcome(handle, timeoutMs);
  return {
    pid: handle.pid,
    first,
    next: () => {
      // A dead probe cannot answer; nextOutcome then reports the end of its output.
      handle.stdin.write("get\n");
      return nextOutcome(handle, timeoutMs);
    },
    close: async () => {
      handle.stdin.end();
      await Promise.race([handle.exited, new Promise((resolve) => setTimeout(resolve, 1000))]);
      await handle.stop();
    },
  };
}

function parseCounts(json: Record<string, unknown> | undefined): ProberCounts | undefined {
  const counts = json?.counts;
  if (typeof counts !== "object" || counts === null) return undefined;
  const record = counts as Record<string, unknown>;
  const parsed: ProberCounts = { 200: 0, refused: 0, timeout: 0, error: 0 };
  for (const key of RESULTS) {
    const value = record[key];
    if (typeof value !== "number") return undefined;
    parsed[key] = value;
  }
  return parsed;
}

export async function startProber(ctx: ProbeContext, options: ProberOptions): Promise<Prober> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const handle = await spawnProbe(ctx, "loop", options);
  const started = parseJson(
    await handle.nextLine(timeoutMs + STARTUP_MARGIN_MS).catch(() => undefined),
  );
  if (started?.started !== true) {
    await handle.stop();
    throw new Error(`prober did not start: ${handle.output()}`);
  }
  let details: readonly string[] = [];
  let stopped: Promise<ProberCounts> | undefined;
  const stop = async (): Promise<ProberCounts> => {
    handle.stdin.write("stop\n");
    for (;;) {
      const line = await handle.nextLine(timeoutMs + STARTUP_MARGIN_MS).catch(() => undefined);
      if (line === undefined) break;
      const json = parseJson(line);
      const counts = parseCounts(json);
      if (counts !== undefined) {
        const reported = json?.details;
        details = Array.isArray(reported) ? reported.map(String) : [];
        await handle.stop();
        return counts;
      }
    }
    await handle.stop();
    throw new Error(`prober ended without reporting counts: ${handle.output()}`);
  };
  return {
    pid: handle.pid,
    stop: () => (stopped ??= stop()),
    details: () => details,
  };
}
