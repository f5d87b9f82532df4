// The Debian root file system the system test boots, and the host tools that boot it. The rootfs
// is built once by debootstrap and cached under /var/cache/imds-guard-test; it is never modified
// afterwards (every run boots a throwaway overlay on top of it). It is never built in place:
// debootstrap fills a temp dir that is renamed into place only once complete and stamped.

import { randomBytes } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { execa } from "execa";
import { removeTreeSync } from "./safe-remove.js";

export const SUITE = "bookworm";
export const VARIANT = "minbase";
/** Node comes from the host (bind-mounted), so the rootfs needs its C++ runtime but no Node. */
export const INCLUDE: readonly string[] = [
  "systemd",
  "systemd-sysv",
  "dbus",
  "iptables",
  "nftables",
  "libstdc++6",
  "ca-certificates",
  "procps",
  "curl",
];
export const CACHE_ROOT = "/var/cache/imds-guard-test";
/** Written into the rootfs last, so its presence means debootstrap finished. */
const STAMP_FILE = ".imds-guard-test-rootfs.json";
const SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

export interface RootfsStamp {
  readonly suite: string;
  readonly variant: string;
  readonly include: readonly string[];
  readonly mirror: string;
  readonly builtAt: string;
  readonly buildSeconds: number;
}

export interface Rootfs {
  readonly path: string;
  readonly stamp: RootfsStamp;
  /** True when this call ran debootstrap (the cache was missing or stale). */
  readonly built: boolean;
}

export function rootfsPath(): string {
  return join(CACHE_ROOT, `rootfs-${SUITE}`);
}

function readStamp(dir: string): RootfsStamp | undefined {
  try {
    const stamp = JSON.parse(readFileSync(join(dir, STAMP_FILE), "utf8")) as RootfsStamp;
    const wanted = [...INCLUDE].sort().join(",");
    if (stamp.suite !== SUITE || stamp.variant !== VARIANT) return undefined;
    if ([...stamp.include].sort().join(",") !== wanted) return undefined;
    return stamp;
  } catch {
    return undefined;
  }
}

/** The cached rootfs if it is complete and built with today's package list. */
export function cachedRootfs(): Rootfs | undefined {
  const stamp = readStamp(rootfsPath());
  return stamp === undefined ? undefined : { path: rootfsPath(), stamp, built: false };
}

function onPath(command: string): boolean {
  return SBIN_PATH.split(":").some((dir) => existsSync(join(dir, command)));
}

/** Host commands the test needs -> the Debian package that provides them. */
const HOST_TOOLS: Readonly<Record<string, string>> = {
  debootstrap: "debootstrap",
  "systemd-nspawn": "systemd-container",
  unshare: "util-linux",
  nsenter: "util-linux",
  setpriv: "util-linux",
};

export function missingHostPackages(): string[] {
  const missing = Object.entries(HOST_TOOLS)
    .filter(([command]) => !onPath(command))
    .map(([, pkg]) => pkg);
  return [...new Set(missing)].sort();
}

/** apt-get installs whatever HOST_TOOLS lacks; returns the packages it installed. */
export async function ensureHostTools(): Promise<string[]> {
  const missing = missingHostPackages();
  if (missing.length === 0) return [];
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive", PATH: SBIN_PATH };
  for (const argv of [
    ["update", "-qq"],
    ["install", "-y", "-qq", "--no-install-recommends", ...missing],
  ]) {
    const result = await execa("apt-get", argv, {
      env,
      reject: false,
      all: true,
      timeout: 600_000,
    });
    if (result.exitCode !== 0) {
      throw new Error(
        `apt-get ${argv.join(" ")} failed (${String(result.exitCode)}):\n${result.all}`,
      );
    }
  }
  const still = missingHostPackages();
  if (still.length > 0) throw new Error(`still missing after apt-get install: ${still.join(" ")}`);
  return missing;
}

interface AptSource {
  readonly types: readonly string[];
  readonly uris: readonly string[];
  readonly suites: readonly string[];
}

function oneLineSources(text: string): AptSource[] {
  const sources: AptSource[] = [];
  for (const raw of text.split("\n")) {
    const line = raw
      .replace(/#.*/, "")
      .replace(/\[[^\]]*\]/, " ")
      .trim();
    const [type, uri, suite] = line.split(/\s+/);
    if (type === undefined || uri === undefined || suite === undefined) continue;
    sources.push({ types: [type], uris: [uri], suites: [suite] });
  }
  return sources;
}

function deb822Sources(text: string): AptSource[] {
  const sources: AptSource[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    for (const line of stanza.split("\n")) {
      if (line.startsWith("#")) continue;
      const match = /^([A-Za-z-]+):\s*(.*)$/.exec(line);
      if (match?.[1] !== undefined && match[2] !== undefined)
        fields.set(match[1].toLowerCase(), match[2]);
    }
    if (fields.get("enabled")?.toLowerCase() === "no") continue;
    const list = (key: string) => (fields.get(key) ?? "").split(/\s+/).filter(Boolean);
    sources.push({ types: list("types"), uris: list("uris"), suites: list("suites") });
  }
  return sources;
}

/** The Debian mirror apt already uses: one serving SUITE, else any ".../debian" archive. */
export function debianMirror(aptDir = "/etc/apt"): string {
  const sources: AptSource[] = [];
  const main = join(aptDir, "sources.list");
  if (existsSync(main)) sources.push(...oneLineSources(readFileSync(main, "utf8")));
  const partsDir = join(aptDir, "sources.list.d");
  const parts = existsSync(partsDir) ? readdirSync(partsDir).sort() : [];
  for (const name of parts) {
    const text = readFileSync(join(partsDir, name), "utf8");
    if (name.endsWith(".list")) sources.push(...oneLineSources(text));
    else if (name.endsWith(".sources")) sources.push(...deb822Sources(text));
  }
  const debs = sources.filter((s) => s.types.includes("deb"));
  const pick =
    debs.find((s) => s.suites.includes(SUITE)) ??
    debs.find((s) => s.uris.some((uri) => /\/debian\/?$/.test(uri)));
  const uri = pick?.uris[0];
  if (uri === undefined) {
    throw new Error(`no Debian mirror for ${SUITE} in ${aptDir}/sources.list or sources.list.d`);
  }
  return uri.replace(/\/+$/, "");
}

/** Undefined when the mirror answers at all (any HTTP status); else why it could not be reached. */
export async function mirrorUnreachable(mirror: string): Promise<string | undefined> {
  const url = `${mirror}/dists/${SUITE}/Release`;
  try {
    await fetch(url, { method: "HEAD", signal: AbortSignal.timeout(15_000) });
    return undefined;
  } catch (error) {
    // undici reports the network error (ECONNREFUSED, ENOTFOUND, timeout) as the cause.
    const cause: unknown = (error as { cause?: unknown }).cause;
    const detail = cause instanceof Error ? ` (${cause.message})` : "";
    return `${url}: ${error instanceof Error ? error.message : String(error)}${detail}`;
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Temp and retired trees left by runs that died; named `.rootfs-<suite>.<tmp|old>-<pid>-<hex>`. */
function removeStaleTrees(): void {
  for (const name of readdirSync(CACHE_ROOT)) {
    const match = /^\.rootfs-.+\.(?:tmp|old)-(\d+)-[0-9a-f]+$/.exec(name);
    if (match?.[1] !== undefined && !pidAlive(Number(match[1])))
      removeTreeSync(join(CACHE_ROOT, name));
  }
}

let building: string | undefined;

/** The temp tree a build in progress writes to, for the last-resort exit cleanup. */
export function rootfsBuildInProgress(): string | undefined {
  return building;
}

/** The cached rootfs, built first (atomically) when missing or stale. */
export async function ensureRootfs(mirror: string): Promise<Rootfs> {
  const cached = cachedRootfs();
  if (cached) return cached;
  mkdirSync(CACHE_ROOT, { recursive: true, mode: 0o755 });
  removeStaleTrees();
  const tag = `${String(process.pid)}-${randomBytes(3).toString("hex")}`;
  const tmp = join(CACHE_ROOT, `.rootfs-${SUITE}.tmp-${tag}`);
  building = tmp;
  try {
    const started = Date.now();
    // Its own mount namespace, so the /proc and /sys debootstrap mounts inside the target
    // vanish with it even if it is killed half-way.
    const result = await execa(
      "unshare",
      [
        "--mount",
        "--propagation",
        "private",
        "--",
        "debootstrap",
        `--variant=${VARIANT}`,
        `--include=${INCLUDE.join(",")}`,
        SUITE,
        tmp,
        mirror,
      ],
      {
        env: { ...process.env, DEBIAN_FRONTEND: "noninteractive", PATH: SBIN_PATH },
        reject: false,
        all: true,
        timeout: 1_200_000,
      },
    );
    if (result.exitCode !== 0) {
      const tail = result.all.split("\n").slice(-30).join("\n");
      throw new Error(
        `debootstrap ${SUITE} from ${mirror} failed (${String(result.exitCode)}):\n${tail}`,
      );
    }
    const stamp: RootfsStamp = {
      suite: SUITE,
      variant: VARIANT,
      include: INCLUDE,
      mirror,
      builtAt: new Date().toISOString(),
      buildSeconds: Math.round((Date.now() - started) / 100) / 10,
    };
    writeFileSync(join(tmp, STAMP_FILE), `${JSON.stringify(stamp, null, 2)}\n`, { mode: 0o644 });

    const final = rootfsPath();
    const retired = join(CACHE_ROOT, `.rootfs-${SUITE}.old-${tag}`);
    // A stale tree (other package list) is retired first. A concurrent run may have put a good
    // one in place meanwhile: rename() then fails on the non-empty target and theirs wins.
    if (existsSync(final) && readStamp(final) === undefined) renameSync(final, retired);
    try {
      renameSync(tmp, final);
    } catch (error) {
      const winner = cachedRootfs();
      if (!winner) throw error;
      return winner;
    } finally {
      if (existsSync(retired)) removeTreeSync(retired);
    }
    return { path: final, stamp, built: true };
  } finally {
    if (existsSync(tmp)) removeTreeSync(tmp);
    building = undefined;
  }
}
