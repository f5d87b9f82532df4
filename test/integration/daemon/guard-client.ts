// What the daemon tests need around one running `imds-guard run`: its config file, its HTTP
// endpoints and metrics as seen from inside the instance namespace, and verdicts for a uid.
// Everything here reads; nothing touches a firewall outside the testbed's namespace.

import assert from "node:assert/strict";
import { rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Family, ProbeUser, Protocol, SpawnedProcess, Testbed } from "../harness/index.js";
import { expectVerdict, makeConfigDir, startDaemon, until } from "../support.js";

export const PORT = 9877;

export interface GuardConfig {
  readonly path: string;
  readonly dir: string;
  /** Writes a sibling temp file and renames it over the config, as editors and CM tools do. */
  replace(yaml: string): Promise<void>;
  /** Truncates and rewrites the config file in place (same inode). */
  overwrite(yaml: string): Promise<void>;
  remove(): Promise<void>;
}

export async function guardConfig(yaml: string): Promise<GuardConfig> {
  const configDir = await makeConfigDir();
  const path = await configDir.write("config.yaml", yaml);
  let serial = 0;
  return {
    path,
    dir: configDir.dir,
    async replace(text) {
      serial += 1;
      const temp = join(configDir.dir, `.config.yaml.${serial}`);
      await writeFile(temp, text, { mode: 0o600 });
      await rename(temp, path);
    },
    async overwrite(text) {
      await writeFile(path, text);
    },
    remove: () => configDir.remove(),
  };
}

/**
 * Starts the daemon and waits for /readyz. NOTIFY_SOCKET is cleared unless given, so a test run
 * under a service manager never reports READY=1 on the runner's behalf.
 */
export async function startGuard(
  testbed: Testbed,
  configPath: string,
  env: Record<string, string> = {},
): Promise<SpawnedProcess> {
  const daemon = await startDaemon(testbed, configPath, [], { NOTIFY_SOCKET: "", ...env });
  try {
    await until("the daemon to report ready", async () => {
      const ready = await http(testbed, "/readyz");
      return ready.status === 200 ? true : undefined;
    });
  } catch (error) {
    throw new Error(`${String(error)}\ndaemon output:\n${daemon.output()}`, { cause: error });
  }
  return daemon;
}

export interface HttpReply {
  /** 0 when nothing answered. */
  readonly status: number;
  readonly body: string;
}

export async function http(testbed: Testbed, path: string, method = "GET"): Promise<HttpReply> {
  const result = await testbed.exec([
    "curl",
    "-sS",
    "--max-time",
    "5",
    "-X",
    method,
    "-o",
    "-",
    "-w",
    "\n%{http_code}",
    `http://127.0.0.1:${PORT}${path}`,
  ]);
  const cut = result.stdout.lastIndexOf("\n");
  return { status: Number(result.stdout.slice(cut + 1)), body: result.stdout.slice(0, cut) };
}

export async function scrape(testbed: Testbed): Promise<Metrics> {
  const reply = await http(testbed, "/metrics");
  assert.equal(reply.status, 200, `GET /metrics: ${reply.body}`);
  return new Metrics(reply.body);
}

/** The text exposition format, read just far enough to pick samples by name and labels. */
export class Metrics {
  constructor(readonly text: string) {}

  /** Values of every sample of `name` whose labels include `labels`. */
  samples(name: string, labels: Readonly<Record<string, string>> = {}): number[] {
    const values: number[] = [];
    for (const line of this.text.split("\n")) {
      const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
      if (match?.[1] !== name) continue;
      const have = new Map(
        [...(match[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]),
      );
      if (Object.entries(labels).every(([key, value]) => have.get(key) === value)) {
        values.push(Number(match[3]));
      }
    }
    return values;
  }

  /** Sum over the matching samples; 0 when there are none (a counter not yet incremented). */
  sum(name: string, labels: Readonly<Record<string, string>> = {}): number {
    return this.samples(name, labels).reduce((total, value) => total + value, 0);
  }

  /** The single sample of an unlabelled gauge or counter. */
  value(name: string): number {
    const values = this.samples(name);
    assert.equal(values.length, 1, `${name} should have exactly one sample:\n${this.text}`);
    return values[0] ?? Number.NaN;
  }
}

export async function assertAllowed(
  testbed: Testbed,
  user: ProbeUser,
  family: Family,
  protocol: Protocol = "tcp",
): Promise<void> {
  await expectVerdict(testbed, user, family, "200", { protocol });
}

/** Refused means a RST or ICMP error at once; a timeout would be a silent drop. */
export async function assertRefused(
  testbed: Testbed,
  user: ProbeUser,
  family: Family,
  protocol: Protocol = "tcp",
): Promise<void> {
  await expectVerdict(testbed, user, family, "refused", { protocol });
}

/** The instance namespace's iptables-save output for one family and flavour. */
export async function saved(
  testbed: Testbed,
  family: Family,
  flavour: "nft" | "legacy" = "nft",
): Promise<string> {
  const tool = family === "ipv4" ? "iptables" : "ip6tables";
  const result = await testbed.exec([`${tool}-${flavour}-save`]);
  assert.equal(result.exitCode, 0, result.stderr);
  return result.stdout;
}

/** OUTPUT rules carrying our tag, as iptables-save prints them. */
export function ourJumps(save: string): string[] {
  return save
    .split("\n")
    .filter((line) => line.startsWith("-A OUTPUT ") && line.includes('"imds-guard:'));
}

/** Whether an IMDS-GUARD rule lets exactly this uid RETURN. */
export function returnsForUid(save: string, uid: number): boolean {
  return save
    .split("\n")
    .some(
      (line) =>
        line.startsWith("-A IMDS-GUARD ") &&
        line.includes(`--uid-owner ${uid} `) &&
        line.endsWith("-j RETURN"),
    );
}
