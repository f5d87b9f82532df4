// A throwaway "cloud VM" for integration tests: an instance namespace and a metadata namespace
// joined by a veth pair, a fake metadata server, and real users and groups. Everything it makes
// carries the run's imdsg prefix and is removed by cleanup(), or by the exit hook if the test
// process dies first. It never touches the host namespace's firewall or routes.

import { chmod, copyFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { registerForExit } from "./exit-cleanup.js";
import { newRunNames, principalName } from "./names.js";
import { NODE, inNamespace, mustRun, run, runInNamespace, type ExecOptions } from "./netns.js";
import {
  addGroup,
  addUser,
  deleteGroup,
  deleteUser,
  type CreateUserOptions,
  type ProbeUser,
  type TestGroup,
  type TestUser,
} from "./principals.js";
import {
  UDP_ECHO_PORT,
  connect,
  holdConnection,
  startProber,
  type Addresses,
  type ConnectOptions,
  type ConnectOutcome,
  type HeldConnection,
  type HoldOptions,
  type ProbeContext,
  type Prober,
  type ProberOptions,
} from "./probes.js";
import {
  ProcessTracker,
  killPid,
  type CommandResult,
  type SpawnOptions,
  type SpawnedProcess,
} from "./processes.js";

export const METADATA_ADDRESSES: Addresses = { ipv4: "169.254.169.254", ipv6: "fd00:ec2::254" };
export const OTHER_ADDRESSES: Addresses = { ipv4: "169.254.169.100", ipv6: "fd00:ec2::100" };
export const INSTANCE_ADDRESSES: Addresses = { ipv4: "169.254.0.2", ipv6: "fd00:ec2::2" };
export const HTTP_PORTS = [80, 443] as const;

/** Interface names live inside our namespaces, so they need no per-run prefix. */
const INSTANCE_IF = "veth-inst";
const METADATA_IF = "veth-meta";

const SCRIPTS = ["probe.mjs", "fake-metadata-server.mjs"] as const;
const SCRIPT_SOURCE = fileURLToPath(new URL("./scripts/", import.meta.url));

export interface TestbedOptions {
  /** How long the fake server may take to answer from the instance namespace; default 15 s. */
  readonly readyTimeoutMs?: number;
}

export interface SpawnInInstanceOptions extends SpawnOptions {
  /** Run as this identity via setpriv; as root when omitted. */
  readonly user?: ProbeUser;
}

export interface Testbed {
  /** `imdsg-<6 hex>`: every namespace, user, group and temp dir of this testbed starts with it. */
  readonly prefix: string;
  readonly instanceNs: string;
  readonly metadataNs: string;
  /** The fake metadata service. */
  readonly targets: Addresses;
  /** A second address of the same server, for "unrelated traffic is untouched" and DNAT. */
  readonly other: Addresses;
  /** The instance's own veth addresses. */
  readonly instance: Addresses;
  readonly udpPort: number;
  /** World-readable temp dir holding the .mjs scripts; the default cwd of commands. */
  readonly scriptDir: string;
  /** PID of the fake metadata server (in the metadata namespace). */
  readonly serverPid: number;
  /** Runs argv inside the instance namespace; never throws for a non-zero exit. */
  exec(argv: readonly string[], options?: ExecOptions): Promise<CommandResult>;
  /** Runs argv inside the metadata namespace. */
  execMeta(argv: readonly string[], options?: ExecOptions): Promise<CommandResult>;
  /** useradd `imdsg<hex>-<shortName>`; deleted by cleanup(). */
  createUser(shortName: string, options?: CreateUserOptions): Promise<TestUser>;
  /** groupadd `imdsg<hex>-<shortName>`; deleted by cleanup(). */
  createGroup(shortName: string): Promise<TestGroup>;
  connect(options: ConnectOptions): Promise<ConnectOutcome>;
  holdConnection(options: HoldOptions): Promise<HeldConnection>;
  startProber(options: ProberOptions): Promise<Prober>;
  /** Starts a long-running process in the instance namespace, stopped by cleanup(). */
  spawnInInstance(
    argv: readonly string[],
    options?: SpawnInInstanceOptions,
  ): Promise<SpawnedProcess>;
  /** Idempotent; also safe after a failed or partial createTestbed. */
  cleanup(): Promise<void>;
}

interface Owned {
  readonly namespaces: string[];
  readonly users: string[];
  readonly groups: string[];
  readonly dirs: string[];
}

export async function createTestbed(options: TestbedOptions = {}): Promise<Testbed> {
  const names = newRunNames();
  const tracker = new ProcessTracker();
  // Recorded before each resource is created, so a half-finished step is still cleaned up.
  const owned: Owned = { namespaces: [], users: [], groups: [], dirs: [] };
  // Unregistered only after a complete teardown, so the exit hook retries whatever failed.
  const unregister = registerForExit(names.prefix, () => ({ pids: tracker.pids(), ...owned }));

  let cleanupRun: Promise<void> | undefined;
  const cleanup = (): Promise<void> => (cleanupRun ??= teardown(tracker, owned).then(unregister));

  try {
    const scriptDir = await stageScripts(names.prefix, owned);
    owned.namespaces.push(names.instanceNs, names.metadataNs);
    await buildNetwork(names.instanceNs, names.metadataNs);
    const server = await startServer(tracker, names.metadataNs, scriptDir);
    const ctx: ProbeContext = {
      instanceNs: names.instanceNs,
      scriptDir,
      tracker,
      targets: METADATA_ADDRESSES,
    };
    await waitUntilServing(ctx, options.readyTimeoutMs ?? 15_000, server);

    const claim = (list: string[], shortName: string): string => {
      const name = principalName(names.hex, shortName);
      if (owned.users.includes(name) || owned.groups.includes(name)) {
        throw new Error(`${name} was already created by this testbed`);
      }
      list.push(name);
      return name;
    };

    return {
      prefix: names.prefix,
      instanceNs: names.instanceNs,
      metadataNs: names.metadataNs,
      targets: METADATA_ADDRESSES,
      other: OTHER_ADDRESSES,
      instance: INSTANCE_ADDRESSES,
      udpPort: UDP_ECHO_PORT,
      scriptDir,
      serverPid: server.pid,
      exec: (argv, execOptions = {}) =>
        runInNamespace(names.instanceNs, argv, { cwd: scriptDir, ...execOptions }),
      execMeta: (argv, execOptions = {}) =>
        runInNamespace(names.metadataNs, argv, { cwd: scriptDir, ...execOptions }),
      createUser: (shortName, userOptions) => addUser(claim(owned.users, shortName), userOptions),
      createGroup: (shortName) => addGroup(claim(owned.groups, shortName)),
      connect: (connectOptions) => connect(ctx, connectOptions),
      holdConnection: (holdOptions) => holdConnection(ctx, holdOptions),
      startProber: (proberOptions) => startProber(ctx, proberOptions),
      spawnInInstance: (argv, { user, ...spawnOptions } = {}) =>
        tracker.spawn(inNamespace(names.instanceNs, argv, user), {
          cwd: scriptDir,
          ...spawnOptions,
        }),
      cleanup,
    };
  } catch (error) {
    await cleanup().catch(() => undefined);
    throw error;
  }
}

/** Creates a testbed, runs fn, and always cleans up (also when fn throws). */
export async function withTestbed<T>(
  fn: (testbed: Testbed) => Promise<T>,
  options?: TestbedOptions,
): Promise<T> {
  const testbed = await createTestbed(options);
  try {
    return await fn(testbed);
  } finally {
    await testbed.cleanup();
  }
}

/** The repo may live under /root (0700), so probes running as test uids read copies from here. */
async function stageScripts(prefix: string, owned: Owned): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `${prefix}-`));
  owned.dirs.push(dir);
  await chmod(dir, 0o755);
  for (const script of SCRIPTS) {
    const target = join(dir, script);
    await copyFile(join(SCRIPT_SOURCE, script), target);
    await chmod(target, 0o644);
  }
  return dir;
}

async function buildNetwork(instanceNs: string, metadataNs: string): Promise<void> {
  for (const ns of [instanceNs, metadataNs]) {
    await mustRun(["ip", "netns", "add", ns]);
    for (const scope of ["all", "default"]) {
      await mustRun(inNamespace(ns, ["sysctl", "-qw", `net.ipv6.conf.${scope}.disable_ipv6=0`]));
    }
    await mustRun(["ip", "-n", ns, "link", "set", "lo", "up"]);
  }
  // Both ends are created directly in their namespaces: the pair never appears on the host.
  await mustRun([
    "ip",
    "link",
    "add",
    INSTANCE_IF,
    "netns",
    instanceNs,
    "type",
    "veth",
    "peer",
    "name",
    METADATA_IF,
    "netns",
    metadataNs,
  ]);
  const addresses: [string, string, string[]][] = [
    [instanceNs, INSTANCE_IF, [`${INSTANCE_ADDRESSES.ipv4}/16`, `${INSTANCE_ADDRESSES.ipv6}/64`]],
    [
      metadataNs,
      METADATA_IF,
      [
        `${METADATA_ADDRESSES.ipv4}/16`,
        `${OTHER_ADDRESSES.ipv4}/16`,
        `${METADATA_ADDRESSES.ipv6}/64`,
        `${OTHER_ADDRESSES.ipv6}/64`,
      ],
    ],
  ];
  for (const [ns, ifname, cidrs] of addresses) {
    for (const cidr of cidrs) {
      // nodad: a tentative IPv6 address would refuse to be used for about a second.
      const extra = cidr.includes(":") ? ["nodad"] : [];
      await mustRun(["ip", "-n", ns, "addr", "add", cidr, "dev", ifname, ...extra]);
    }
    await mustRun(["ip", "-n", ns, "link", "set", ifname, "up"]);
  }
}

async function startServer(
  tracker: ProcessTracker,
  metadataNs: string,
  scriptDir: string,
): Promise<SpawnedProcess> {
  const argv = inNamespace(metadataNs, [
    NODE,
    join(scriptDir, "fake-metadata-server.mjs"),
    HTTP_PORTS.join(","),
    String(UDP_ECHO_PORT),
    [
      METADATA_ADDRESSES.ipv4,
      OTHER_ADDRESSES.ipv4,
      METADATA_ADDRESSES.ipv6,
      OTHER_ADDRESSES.ipv6,
      "127.0.0.1",
      "::1",
    ].join(","),
  ]);
  const server = await tracker.spawn(argv, { cwd: scriptDir });
  const line = await server.nextLine(15_000).catch(() => undefined);
  if (line === undefined || !line.includes('"ready":true')) {
    throw new Error(`fake metadata server did not start: ${server.output()}`);
  }
  return server;
}

/** Listening is not enough: the veth link must be up in both namespaces for both families. */
async function waitUntilServing(
  ctx: ProbeContext,
  timeoutMs: number,
  server: SpawnedProcess,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const outcomes = await Promise.all(
      (["ipv4", "ipv6"] as const).map((family) => connect(ctx, { family, timeoutMs: 500 })),
    );
    if (outcomes.every((outcome) => outcome.result === "200")) return;
    if (Date.now() > deadline) {
      throw new Error(
        `metadata server not reachable from the instance namespace: ` +
          `${JSON.stringify(outcomes)}\nserver output: ${server.output()}`,
      );
    }
    await sleep(100);
  }
}

async function teardown(tracker: ProcessTracker, owned: Owned): Promise<void> {
  const problems: string[] = [];
  await tracker.stopAll();
  // Anything else still inside our namespaces was started by a test through us (e.g. a shell's
  // child); find it by PID so deleting the namespace does not leave it running.
  for (const ns of owned.namespaces) {
    const listed = await run(["ip", "netns", "pids", ns]);
    const pids = listed.stdout.split(/\s+/).filter(Boolean).map(Number);
    await Promise.all(pids.map((pid) => killPid(pid)));
  }
  for (const ns of owned.namespaces) {
    const result = await run(["ip", "netns", "del", ns]);
    if (result.exitCode !== 0 && !/No such file/i.test(result.stderr)) {
      problems.push(`ip netns del ${ns}: ${result.stderr}`);
    }
  }
  // Users first: a group cannot be deleted while it is some user's primary group.
  for (const user of owned.users) {
    const problem = await deleteUser(user);
    if (problem !== undefined) problems.push(problem);
  }
  for (const group of owned.groups) {
    const problem = await deleteGroup(group);
    if (problem !== undefined) problems.push(problem);
  }
  for (const dir of owned.dirs) await rm(dir, { recursive: true, force: true });
  if (problems.length > 0) throw new Error(`testbed cleanup incomplete:\n${problems.join("\n")}`);
}
