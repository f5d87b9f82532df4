// A real systemd booted by systemd-nspawn in a throwaway container: an overlay on the cached
// rootfs, its own network namespace (--private-network) and its own cgroup subtree. Commands reach
// it only through nsenter into its init, and only after checking that init's network namespace is
// not ours, so nothing the test runs can touch the host's firewall. destroy() (or the exit hook,
// if the test process dies first) removes everything it created and nothing else.

import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { execa } from "execa";
import { onExit, sleepSync } from "./exit-hook.js";
import { removeTreeSync } from "./safe-remove.js";

const SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/** The environment of every command run in the container; nothing of ours leaks in. */
const CONTAINER_ENV = { PATH: SBIN_PATH, LANG: "C.UTF-8", SYSTEMD_PAGER: "", SYSTEMD_COLORS: "0" };
/** nspawn's per-machine runtime state on the host, which it cannot always remove itself. */
const NSPAWN_STATE = "/run/systemd/nspawn";

export interface ContainerFile {
  /** Absolute path inside the container. */
  readonly path: string;
  /** A regular file with this content, or else a symlink to `symlinkTo`. */
  readonly content?: string;
  readonly symlinkTo?: string;
  /** Default 0644; files are always root-owned. */
  readonly mode?: number;
}

export interface MachineOptions {
  /** Lower layer of the overlay; never written. */
  readonly rootfs: string;
  /** Directories to create with exactly this mode (root-owned); parents copy the rootfs's. */
  readonly dirs?: readonly { readonly path: string; readonly mode: number }[];
  readonly files?: readonly ContainerFile[];
  /** [host path, container path] pairs, bind-mounted read-only. */
  readonly bindReadOnly?: readonly (readonly [string, string])[];
  readonly bootTimeoutMs?: number;
}

export interface CommandResult {
  /** Undefined when the command was killed (timeout). */
  readonly exitCode: number | undefined;
  readonly stdout: string;
  readonly stderr: string;
}

export interface Machine {
  readonly name: string;
  /** Host PID of systemd-nspawn. */
  readonly nspawnPid: number;
  /** Host PID of the container's systemd (PID 1 inside). */
  readonly initPid: number;
  /** What `systemctl is-system-running` said once boot finished (running or degraded). */
  readonly systemState: string;
  exec(argv: readonly string[], timeoutMs?: number): Promise<CommandResult>;
  /** stdout of argv; throws with stderr unless it exits 0. */
  mustExec(argv: readonly string[], timeoutMs?: number): Promise<string>;
  /** The last lines nspawn and the container's console wrote. */
  consoleTail(lines?: number): string;
  destroy(): Promise<void>;
}

interface Owned {
  readonly name: string;
  readonly runDir: string;
  readonly cgroups: string[];
  readonly nspawnStateExisted: boolean;
  /** Our unreaped child, so safe to signal; cleared the moment it exits (its PID may be reused). */
  nspawnPid?: number;
  /** nspawn's lock on the container's root dir, which it leaves behind when SIGKILLed. */
  imageLock?: string;
}

function signal(pid: number | undefined, name: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(pid, name);
  } catch {
    // already gone
  }
}

/**
 * Where the container's cgroup subtree goes: below our own cgroup in each hierarchy nspawn uses
 * (cgroup2, and the v1 name=systemd one on hybrid hosts). Without this nspawn --keep-unit would
 * put its payload/ and supervisor/ groups straight into our cgroup, often the root one.
 */
function cgroupParents(): string[] {
  const own = new Map<string, string>();
  for (const line of readFileSync("/proc/self/cgroup", "utf8").split("\n")) {
    const match = /^\d+:([^:]*):(.*)$/.exec(line);
    if (match?.[1] !== undefined && match[2] !== undefined) own.set(match[1], match[2]);
  }
  const parents = new Set<string>();
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const [before, after] = line.split(" - ");
    if (before === undefined || after === undefined) continue;
    const fields = before.split(" ");
    const [fstype, , superOptions = ""] = after.split(" ");
    const mountRoot = fields[3] ?? "/";
    const point = fields[4] ?? "";
    if (!point.startsWith("/sys/fs/cgroup")) continue;
    let path: string | undefined;
    if (fstype === "cgroup2") path = own.get("");
    else if (fstype === "cgroup" && superOptions.split(",").includes("name=systemd"))
      path = own.get("name=systemd");
    if (path === undefined) continue;
    parents.add(join(point, relative(mountRoot, path)));
  }
  if (parents.size === 0)
    throw new Error("no cgroup2 or name=systemd hierarchy under /sys/fs/cgroup");
  return [...parents];
}

/** Every cgroup below (and including) dir, deepest first. */
function cgroupTree(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const below = readdirSync(dir, { withFileTypes: true })
    .filter((entry) => entry.isDirectory())
    .flatMap((entry) => cgroupTree(join(dir, entry.name)));
  return [...below, dir];
}

/** Kills what is left in our cgroups (only the container's processes can be there), then rmdirs. */
function removeCgroupsSync(dirs: readonly string[], timeoutMs: number): string[] {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left: string[] = [];
    for (const root of dirs) {
      for (const dir of cgroupTree(root)) {
        try {
          for (const pid of readFileSync(join(dir, "cgroup.procs"), "utf8").split("\n")) {
            if (pid !== "") signal(Number(pid), "SIGKILL");
          }
          rmdirSync(dir);
        } catch {
          if (existsSync(dir)) left.push(dir);
        }
      }
    }
    if (left.length === 0 || Date.now() > deadline) return left;
    sleepSync(100);
  }
}

function removeOwnedSync(owned: Owned): void {
  // The container's processes, nspawn included (it moves itself to supervisor/), are all in our
  // cgroups, which is how they are found and killed below; none are signalled by a bare PID.
  signal(owned.nspawnPid, "SIGKILL");
  const problems: string[] = [];
  const stuck = removeCgroupsSync(owned.cgroups, 10_000);
  if (stuck.length > 0) problems.push(`cgroups not removable: ${stuck.join(", ")}`);
  if (owned.imageLock !== undefined && stuck.length === 0) rmSync(owned.imageLock, { force: true });
  for (const sub of ["propagate", "unix-export"]) {
    const dir = join(NSPAWN_STATE, sub, owned.name);
    try {
      if (existsSync(dir)) removeTreeSync(dir);
    } catch (error) {
      problems.push(String(error));
    }
  }
  if (!owned.nspawnStateExisted) {
    // We brought /run/systemd/nspawn into being; take it away again if nobody else uses it.
    for (const dir of [
      join(NSPAWN_STATE, "locks"),
      join(NSPAWN_STATE, "propagate"),
      NSPAWN_STATE,
    ]) {
      try {
        rmdirSync(dir);
      } catch {
        // not empty (another container) or absent
      }
    }
  }
  try {
    removeTreeSync(owned.runDir);
  } catch (error) {
    problems.push(String(error));
  }
  if (problems.length > 0)
    throw new Error(`${owned.name}: cleanup incomplete: ${problems.join("; ")}`);
}

const MACHINE_NAME = /^imdsg-sys-[0-9a-f]{6}$/;

/**
 * What runs killed with SIGKILL left (nspawn then powers the container off by itself, through
 * its parent-death signal, but nobody removes the rest): cgroup trees with no process left in
 * them, older than a minute so that a concurrent run's fresh, still empty one is spared,
 * and the overlay dirs of the same name.
 */
function reapStaleSync(parents: readonly string[]): void {
  for (const parent of parents) {
    for (const entry of readdirSync(parent).filter((e) => MACHINE_NAME.test(e))) {
      const dir = join(parent, entry);
      try {
        if (Date.now() - statSync(dir).mtimeMs < 60_000) continue;
        const tree = cgroupTree(dir);
        if (tree.some((d) => readFileSync(join(d, "cgroup.procs"), "utf8").trim() !== "")) continue;
        for (const d of tree) rmdirSync(d);
        for (const leftover of readdirSync(tmpdir())) {
          if (leftover.startsWith(`${entry}-`)) removeTreeSync(join(tmpdir(), leftover));
        }
      } catch {
        // in use, or removed by someone else meanwhile: not ours to insist on
      }
    }
  }
}

/** Creates `path` in the overlay's upper dir, each missing parent copying the rootfs's dir. */
function makeUpperDir(upper: string, rootfs: string, path: string, mode?: number): void {
  const parent = dirname(path);
  if (parent !== path) makeUpperDir(upper, rootfs, parent);
  const target = join(upper, path);
  if (!existsSync(target)) mkdirSync(target);
  const lower = join(rootfs, path);
  // The upper dir's owner and mode are what the merged view shows.
  const like = mode === undefined && existsSync(lower) ? statSync(lower) : undefined;
  chownSync(target, like?.uid ?? 0, like?.gid ?? 0);
  chmodSync(target, mode ?? (like ? like.mode & 0o7777 : 0o755));
}

function placeFiles(upper: string, options: MachineOptions): void {
  for (const dir of options.dirs ?? []) makeUpperDir(upper, options.rootfs, dir.path, dir.mode);
  for (const file of options.files ?? []) {
    makeUpperDir(upper, options.rootfs, dirname(file.path));
    const target = join(upper, file.path);
    if (file.symlinkTo !== undefined) {
      symlinkSync(file.symlinkTo, target);
      continue;
    }
    writeFileSync(target, file.content ?? "", { mode: file.mode ?? 0o644 });
    chownSync(target, 0, 0);
    chmodSync(target, file.mode ?? 0o644);
  }
}

// Runs as: sh -c LAUNCH argv0 LOWER UPPER WORK MERGED CGROUP_PROCS_FILES -- NSPAWN_ARGS...
// Joins the cgroups and mounts the overlay in its own mount namespace (the overlay disappears
// with the container), then becomes systemd-nspawn: the PID we spawned is nspawn's PID.
const LAUNCH = `set -eu
lower=$1 upper=$2 work=$3 merged=$4 procs=$5
shift 6
for f in $procs; do echo $$ > "$f"; done
mount -t overlay imdsg-sys -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$merged"
exec systemd-nspawn "$@"`;

async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  timeoutMs: number,
  everyMs: number,
  abort: () => string | undefined,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    const reason = abort();
    if (reason !== undefined) throw new Error(`${what}: ${reason}`);
    if (Date.now() > deadline) throw new Error(`timed out after ${String(timeoutMs)} ms: ${what}`);
    await sleep(everyMs);
  }
}

function containerInit(nspawnPid: number): number | undefined {
  let children: string[];
  try {
    children = readFileSync(`/proc/${String(nspawnPid)}/task/${String(nspawnPid)}/children`, "utf8")
      .split(/\s+/)
      .filter(Boolean);
  } catch {
    return undefined;
  }
  for (const child of children) {
    try {
      const status = readFileSync(`/proc/${child}/status`, "utf8");
      const nspid = /^NSpid:\s+(.*)$/m.exec(status)?.[1]?.split(/\s+/) ?? [];
      // PID 1 of a PID namespace one level below ours, and already exec'd into systemd.
      if (
        nspid.length === 2 &&
        nspid[1] === "1" &&
        readlinkSync(`/proc/${child}/exe`).endsWith("/systemd")
      )
        return Number(child);
    } catch {
      // exited or not yet exec'd
    }
  }
  return undefined;
}

export async function bootMachine(options: MachineOptions): Promise<Machine> {
  const name = `imdsg-sys-${randomBytes(3).toString("hex")}`;
  const runDir = mkdtempSync(join(tmpdir(), `${name}-`));
  const owned: Owned = {
    name,
    runDir,
    cgroups: [],
    nspawnStateExisted: existsSync(NSPAWN_STATE),
  };
  const unregister = onExit(() => {
    removeOwnedSync(owned);
  });
  let nspawnExited: Promise<void> | undefined;
  let exitedEarly: string | undefined;
  const logPath = join(runDir, "console.log");
  const consoleTail = (lines = 40): string => {
    try {
      return readFileSync(logPath, "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "";
    }
  };

  const destroy = async (): Promise<void> => {
    if (owned.nspawnPid !== undefined && nspawnExited !== undefined) {
      // nspawn turns SIGTERM into SIGRTMIN+3 for the container's systemd: a clean poweroff.
      signal(owned.nspawnPid, "SIGTERM");
      const timedOut = await Promise.race([
        nspawnExited.then(() => false),
        sleep(20_000, undefined, { ref: false }).then(() => true),
      ]);
      if (timedOut) {
        signal(owned.nspawnPid, "SIGKILL");
        await Promise.race([nspawnExited, sleep(5_000, undefined, { ref: false })]);
      }
    }
    // Still registered until here, so a signal during the poweroff is covered too.
    try {
      removeOwnedSync(owned);
    } finally {
      unregister();
    }
  };

  try {
    for (const path of [runDir, options.rootfs]) {
      if (/[,:\s]/.test(path))
        throw new Error(`overlay paths may not contain , : or blanks: ${path}`);
    }
    const upper = join(runDir, "upper");
    const work = join(runDir, "work");
    const merged = join(runDir, "merged");
    for (const dir of [upper, work, merged]) mkdirSync(dir, { mode: 0o755 });
    placeFiles(upper, options);
    const parents = cgroupParents();
    reapStaleSync(parents);
    for (const parent of parents) {
      const dir = join(parent, name);
      mkdirSync(dir);
      owned.cgroups.push(dir);
    }

    const nspawnArgs = [
      "--boot",
      "--keep-unit",
      "--register=no",
      `--machine=${name}`,
      `--directory=${merged}`,
      "--private-network",
      "--link-journal=no",
      "--resolv-conf=off",
      "--timezone=off",
      "--console=pipe",
      ...(options.bindReadOnly ?? []).map(([host, inside]) => `--bind-ro=${host}:${inside}`),
    ];
    const logFd = openSync(logPath, "a", 0o600);
    let child: ChildProcess;
    try {
      // setpriv --pdeathsig: if this process dies before destroy(), nspawn is told to power off.
      child = spawn(
        "setpriv",
        [
          "--pdeathsig",
          "SIGTERM",
          "--",
          "unshare",
          "--mount",
          "--propagation",
          "private",
          "--",
          "/bin/sh",
          "-c",
          LAUNCH,
          "imdsg-sys-launch",
          options.rootfs,
          upper,
          work,
          merged,
          owned.cgroups.map((dir) => join(dir, "cgroup.procs")).join("\n"),
          "--",
          ...nspawnArgs,
        ],
        { stdio: ["ignore", logFd, logFd], env: CONTAINER_ENV, detached: true },
      );
    } finally {
      closeSync(logFd);
    }
    const nspawnPid = child.pid;
    if (nspawnPid === undefined) throw new Error("could not spawn setpriv/unshare/systemd-nspawn");
    owned.nspawnPid = nspawnPid;
    nspawnExited = new Promise<void>((resolveExit) => {
      child.once("exit", (code, sig) => {
        owned.nspawnPid = undefined;
        exitedEarly = `systemd-nspawn exited (${String(code ?? sig)})`;
        resolveExit();
      });
    });
    const abort = () =>
      exitedEarly === undefined ? undefined : `${exitedEarly}; console:\n${consoleTail()}`;

    const initPid = await waitFor(
      "container init",
      () => containerInit(nspawnPid),
      30_000,
      50,
      abort,
    );
    const root = statSync(`/proc/${String(initPid)}/root`);
    const lock = join(NSPAWN_STATE, "locks", `inode-${String(root.dev)}:${String(root.ino)}`);
    if (existsSync(lock)) owned.imageLock = lock;
    const hostNet = readlinkSync("/proc/self/ns/net");
    const isolated = (): void => {
      // Checked before every command, so a container that died (and a PID reused by anything
      // else) is never entered: init must still sit in our cgroup and in another netns.
      const pid = String(initPid);
      let cgroups = "";
      let net = hostNet;
      try {
        cgroups = readFileSync(`/proc/${pid}/cgroup`, "utf8");
        net = readlinkSync(`/proc/${pid}/ns/net`);
      } catch {
        // gone: refused below
      }
      if (!cgroups.includes(`/${name}/`)) throw new Error(`${name}: its init (PID ${pid}) is gone`);
      if (net === hostNet) throw new Error(`refusing to run in ${name}: its init shares our netns`);
    };
    isolated();

    const exec = async (argv: readonly string[], timeoutMs = 30_000): Promise<CommandResult> => {
      isolated();
      const result = await execa(
        "nsenter",
        ["--target", String(initPid), "--all", "--root", "--wd", "--", ...argv],
        {
          env: CONTAINER_ENV,
          extendEnv: false,
          reject: false,
          stdin: "ignore",
          timeout: timeoutMs,
        },
      );
      return { exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr };
    };
    const mustExec = async (argv: readonly string[], timeoutMs?: number): Promise<string> => {
      const result = await exec(argv, timeoutMs);
      if (result.exitCode !== 0) {
        throw new Error(
          `${name}: ${argv.join(" ")} failed (${String(result.exitCode)}): ${result.stderr}`,
        );
      }
      return result.stdout;
    };

    const systemState = await waitFor(
      "systemctl is-system-running: running or degraded",
      async () => {
        const state = (await exec(["systemctl", "is-system-running"], 10_000)).stdout.trim();
        return state === "running" || state === "degraded" ? state : undefined;
      },
      options.bootTimeoutMs ?? 90_000,
      250,
      abort,
    );

    return {
      name,
      nspawnPid,
      initPid,
      systemState,
      exec,
      mustExec,
      consoleTail,
      destroy,
    };
  } catch (error) {
    const tail = consoleTail();
    await destroy();
    throw new Error(
      `${name}: boot failed: ${String(error)}${tail === "" ? "" : `\nconsole:\n${tail}`}`,
      {
        cause: error,
      },
    );
  }
}
