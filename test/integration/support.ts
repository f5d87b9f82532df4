// Shared by the integration tests, the demo and the benchmark: run the built imds-guard CLI
// inside a testbed's instance namespace (never the host's), write configs where the
// StrictModes check accepts them, and read the namespace's rulesets for comparison.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type {
  CommandResult,
  ConnectOutcome,
  Family,
  ProbeUser,
  SpawnedProcess,
  Testbed,
} from "./harness/index.js";

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
/** The compiled CLI (npm run build); tests run what ships, not tsx. */
export const CLI = join(REPO_ROOT, "dist", "src", "cli", "main.js");

export function assertBuilt(): void {
  assert.ok(existsSync(CLI), `${CLI} is missing: run \`npm run build\` first (npm test does)`);
}

/** A private 0700 directory for config files (the loader refuses group/other-writable dirs). */
export async function makeConfigDir(): Promise<{
  dir: string;
  write(name: string, yaml: string): Promise<string>;
  remove(): Promise<void>;
}> {
  const dir = await mkdtemp(join(tmpdir(), "imdsg-config-"));
  await chmod(dir, 0o700);
  return {
    dir,
    async write(name, yaml) {
      const path = join(dir, name);
      await writeFile(path, yaml, { mode: 0o600 });
      await chmod(path, 0o600);
      return path;
    },
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}

/** Runs `imds-guard ARGS` as root inside the testbed's instance namespace. */
export function imdsGuard(
  testbed: Testbed,
  args: readonly string[],
  timeoutMs = 60_000,
): Promise<CommandResult> {
  assertBuilt();
  return testbed.exec(["/usr/bin/node", CLI, ...args], { timeoutMs });
}

/** Starts `imds-guard run` inside the instance namespace; the testbed stops it on cleanup. */
export function startDaemon(
  testbed: Testbed,
  configPath: string,
  extraArgs: readonly string[] = [],
  env: Record<string, string> = {},
): Promise<SpawnedProcess> {
  assertBuilt();
  return testbed.spawnInInstance(
    ["/usr/bin/node", CLI, ...extraArgs, "run", "--config", configPath],
    { env },
  );
}

export type Flavour = "nft" | "legacy";

/** Full save of both families in the instance namespace, counters stripped. */
export async function saveRuleset(testbed: Testbed, flavour: Flavour = "nft"): Promise<string> {
  const parts: string[] = [];
  for (const tool of ["iptables", "ip6tables"]) {
    const result = await testbed.exec([`${tool}-${flavour}-save`]);
    assert.equal(result.exitCode, 0, result.stderr);
    parts.push(
      result.stdout
        .split("\n")
        .filter((line) => !line.startsWith("#"))
        .map((line) => line.replace(/\[\d+:\d+\]/g, "[0:0]"))
        .join("\n"),
    );
  }
  return parts.join("\n");
}

/** Runs an iptables command in the instance namespace and insists it works. */
export async function iptablesIn(testbed: Testbed, argv: readonly string[]): Promise<void> {
  const result = await testbed.exec(argv);
  assert.equal(result.exitCode, 0, `${argv.join(" ")}: ${result.stderr}`);
}

export async function until<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 10_000,
  everyMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export interface VerdictOptions {
  readonly port?: number;
  readonly host?: string;
  readonly protocol?: "tcp" | "udp";
}

/**
 * Connects as `user` from the instance namespace and asserts the verdict. The 900 ms timeout
 * is below the ~1 s an IPv6 ICMP refusal takes, so "refused" here means an immediate reset
 * (or ICMP error for UDP), never a silent drop.
 */
export async function expectVerdict(
  testbed: Testbed,
  user: ProbeUser,
  family: Family,
  expected: "200" | "refused",
  options: VerdictOptions = {},
): Promise<ConnectOutcome> {
  const outcome = await testbed.connect({ user, family, timeoutMs: 900, ...options });
  const what = `uid ${user.uid} ${family} ${options.protocol ?? "tcp"}${options.port === undefined ? "" : `/${options.port}`}${options.host === undefined ? "" : ` to ${options.host}`}`;
  assert.equal(
    outcome.result,
    expected,
    `${what}: ${outcome.result} in ${outcome.ms} ms${outcome.detail === undefined ? "" : ` (${outcome.detail})`}`,
  );
  return outcome;
}
