// How a command gets into a namespace and an identity: `ip netns exec` then `setpriv`, both of
// which exec() in place, so the PID we spawn is the PID of the final program. Every command the
// harness runs in a namespace goes through here; nothing runs in the host namespace by accident.

import { execa } from "execa";
import type { CommandResult } from "./processes.js";
import type { ProbeUser } from "./principals.js";

export const NODE = "/usr/bin/node";

export interface ExecOptions {
  /** Run as this uid/gid/groups via setpriv; as root when omitted. */
  readonly user?: ProbeUser;
  readonly input?: string;
  /** Killed (SIGTERM, then SIGKILL) after this long; default 30 s. */
  readonly timeoutMs?: number;
  readonly env?: Readonly<Record<string, string>>;
  readonly cwd?: string;
}

export function setprivArgv(user: ProbeUser): string[] {
  const groups = user.groups ?? [];
  return [
    "setpriv",
    "--reuid",
    String(user.uid),
    "--regid",
    String(user.gid),
    ...(groups.length > 0 ? ["--groups", groups.join(",")] : ["--clear-groups"]),
    "--",
  ];
}

export function inNamespace(ns: string, argv: readonly string[], user?: ProbeUser): string[] {
  return ["ip", "netns", "exec", ns, ...(user === undefined ? [] : setprivArgv(user)), ...argv];
}

/** Runs to completion; never throws for a non-zero exit. */
export async function run(
  argv: readonly string[],
  options: ExecOptions = {},
): Promise<CommandResult> {
  const [file, ...args] = argv;
  if (file === undefined) throw new Error("run: empty argv");
  const result = await execa(file, args, {
    reject: false,
    timeout: options.timeoutMs ?? 30_000,
    forceKillAfterDelay: 2000,
    input: options.input,
    env: options.env,
    cwd: options.cwd,
  });
  return {
    exitCode: result.exitCode,
    ...(result.signal === undefined ? {} : { signal: result.signal }),
    stdout: result.stdout,
    stderr: result.stderr === "" ? (result.message ?? "") : result.stderr,
  };
}

export function runInNamespace(
  ns: string,
  argv: readonly string[],
  options: ExecOptions = {},
): Promise<CommandResult> {
  return run(inNamespace(ns, argv, options.user), options);
}

/** Throws with the command's stderr unless it exits 0. */
export async function mustRun(argv: readonly string[], options: ExecOptions = {}): Promise<string> {
  const result = await run(argv, options);
  if (result.exitCode !== 0) {
    throw new Error(`${argv.join(" ")} failed (${String(result.exitCode)}): ${result.stderr}`);
  }
  return result.stdout;
}
