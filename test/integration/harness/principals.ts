// Real throwaway users and groups in /etc/passwd and /etc/group, created with the distro tools so
// NSS sees exactly what the daemon would see on a VM. Only names produced by principalName() are
// ever created or deleted here.

import { setTimeout as sleep } from "node:timers/promises";
import { execa } from "execa";

/** Who a probe runs as; a TestUser fits as is. */
export interface ProbeUser {
  readonly uid: number;
  readonly gid: number;
  /** Supplementary gids; none when omitted. */
  readonly groups?: readonly number[];
}

export interface TestUser extends ProbeUser {
  readonly name: string;
  /** Every gid of the user as `id -G` reports it, primary first (what a login would get). */
  readonly groups: readonly number[];
}

export interface TestGroup {
  readonly name: string;
  readonly gid: number;
}

export interface CreateUserOptions {
  /** Full name of the primary group (e.g. a TestGroup's name); the distro default otherwise. */
  readonly primaryGroup?: string;
  /** Full names of supplementary groups. */
  readonly groups?: readonly string[];
}

/** Another process (a concurrent test run) may hold the passwd/group lock for a moment. */
async function runShadowTool(file: string, args: readonly string[]): Promise<void> {
  for (let attempt = 0; ; attempt += 1) {
    const result = await execa(file, args, { reject: false });
    if (result.exitCode === 0) return;
    if (!/lock/i.test(result.stderr) || attempt >= 20) {
      throw new Error(
        `${file} ${args.join(" ")} failed (${String(result.exitCode)}): ${result.stderr}`,
      );
    }
    await sleep(50 + Math.random() * 200);
  }
}

async function idNumbers(flag: "-u" | "-g" | "-G", name: string): Promise<number[]> {
  const result = await execa("id", [flag, name]);
  return result.stdout.trim().split(/\s+/).map(Number);
}

export async function addGroup(name: string): Promise<TestGroup> {
  await runShadowTool("groupadd", [name]);
  const entry = (await execa("getent", ["group", name])).stdout.trim();
  const gid = Number(entry.split(":")[2]);
  if (!Number.isInteger(gid)) throw new Error(`getent group ${name} returned ${entry}`);
  return { name, gid };
}

export async function addUser(name: string, options: CreateUserOptions = {}): Promise<TestUser> {
  const args = ["-M", "-N", "-s", "/usr/sbin/nologin"];
  if (options.primaryGroup !== undefined) args.push("-g", options.primaryGroup);
  if (options.groups !== undefined && options.groups.length > 0) {
    args.push("-G", options.groups.join(","));
  }
  await runShadowTool("useradd", [...args, name]);
  const [uid] = await idNumbers("-u", name);
  const [gid] = await idNumbers("-g", name);
  const groups = await idNumbers("-G", name);
  if (uid === undefined || gid === undefined) throw new Error(`id could not resolve ${name}`);
  return { name, uid, gid, groups };
}

const NO_SUCH_USER = 6;
const NO_SUCH_GROUP = 6;

/** Returns an error message, or undefined when the user is gone (or never existed). */
export async function deleteUser(name: string): Promise<string | undefined> {
  const plain = await execa("userdel", [name], { reject: false });
  if (plain.exitCode === 0 || plain.exitCode === NO_SUCH_USER) return undefined;
  // Usually "currently used by process": a killed probe not yet reaped. -f is safe here because
  // the user has no home or mail spool and no group shares its name unless we made one.
  const forced = await execa("userdel", ["-f", name], { reject: false });
  if (forced.exitCode === 0 || forced.exitCode === NO_SUCH_USER) return undefined;
  return `userdel ${name}: ${plain.stderr} / ${forced.stderr}`;
}

export async function deleteGroup(name: string): Promise<string | undefined> {
  const result = await execa("groupdel", [name], { reject: false });
  if (result.exitCode === 0 || result.exitCode === NO_SUCH_GROUP) return undefined;
  return `groupdel ${name}: ${result.stderr}`;
}
