// Reads the config file from disk and hands its text to the pure parser. Owns one rule, after
// sshd's StrictModes: never act on a file that anyone but root could have written, because the
// config decides who may reach the instance credentials. It never parses before that check.

import { createHash } from "node:crypto";
import { constants } from "node:fs";
import * as fsp from "node:fs/promises";
import { dirname } from "node:path";
import type { Config } from "../core/config-model.js";
import { parseConfig } from "../core/config.js";
import type { ConfigProblem } from "../core/config.js";
import { ImdsGuardError } from "../core/errors.js";

export type LoadResult =
  | {
      readonly ok: true;
      readonly config: Config;
      readonly warnings: string[];
      readonly text: string;
      /** sha256 hex of the file's bytes, so it matches `sha256sum` on the same file. */
      readonly digest: string;
    }
  | { readonly ok: false; readonly problems: ConfigProblem[] };

/** The parts of a stat result the checks need. */
export interface FileStat {
  readonly uid: number;
  readonly mode: number;
  isFile(): boolean;
  isDirectory(): boolean;
  isSymbolicLink(): boolean;
}

export interface ConfigFileHandle {
  stat(): Promise<FileStat>;
  readFile(): Promise<Uint8Array>;
  close(): Promise<void>;
}

/** The filesystem calls used, so a test can hand in a fake; node:fs/promises by default. */
export interface ConfigFs {
  lstat(path: string): Promise<FileStat>;
  stat(path: string): Promise<FileStat>;
  realpath(path: string): Promise<string>;
  open(path: string, flags: number): Promise<ConfigFileHandle>;
}

export interface LoadOptions {
  /**
   * Skip the "owned by root" checks (modes are still checked). For running unprivileged in
   * development only; there is deliberately no environment variable that does the same.
   */
  readonly allowNonRootOwner?: boolean;
}

const nodeFs: ConfigFs = {
  lstat: (path) => fsp.lstat(path),
  stat: (path) => fsp.stat(path),
  realpath: (path) => fsp.realpath(path),
  open: async (path, flags) => {
    const handle = await fsp.open(path, flags);
    return {
      stat: () => handle.stat(),
      readFile: () => handle.readFile(),
      close: () => handle.close(),
    };
  },
};

const GROUP_OR_OTHER_WRITABLE = 0o022;

function octal(mode: number): string {
  return `0${(mode & 0o777).toString(8).padStart(3, "0")}`;
}

function kindOf(stat: FileStat): string {
  return stat.isDirectory()
    ? "a directory"
    : stat.isSymbolicLink()
      ? "a symlink"
      : "not a regular file";
}

function insecure(message: string, details: Record<string, unknown>): ImdsGuardError {
  return new ImdsGuardError("IMDSG_CONFIG_INSECURE", message, details);
}

const UNREADABLE_REASON: Readonly<Record<string, string>> = {
  ENOENT:
    "no such file; fix: create it (an example ships as config/imds-guard.yaml) or give the right path",
  EACCES: "permission denied; fix: run imds-guard as root",
  EPERM: "permission denied; fix: run imds-guard as root",
  ENOTDIR: "a parent of this path is not a directory; fix: give the right path",
  ELOOP: "too many levels of symlinks; fix: point the path at the file itself",
};

function unreadable(path: string, error: unknown): ImdsGuardError {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const reason =
    UNREADABLE_REASON[code ?? ""] ?? (error instanceof Error ? error.message : String(error));
  return new ImdsGuardError(
    "IMDSG_CONFIG_UNREADABLE",
    `${path}: cannot read the config file: ${reason}`,
    { path, errno: code },
  );
}

function checkDirectory(dir: string, stat: FileStat, options: LoadOptions): void {
  const details = { path: dir, uid: stat.uid, mode: octal(stat.mode) };
  if (!options.allowNonRootOwner && stat.uid !== 0) {
    throw insecure(
      `${dir}: refusing to use a config file in a directory owned by uid ${stat.uid}, not root; ` +
        `whoever owns it can replace the file; fix: chown root ${dir}`,
      details,
    );
  }
  if ((stat.mode & GROUP_OR_OTHER_WRITABLE) !== 0) {
    throw insecure(
      `${dir}: refusing to use a config file in a directory writable by group or others ` +
        `(mode ${octal(stat.mode)}); anyone who can write there can replace the file; ` +
        `fix: chmod go-w ${dir}`,
      details,
    );
  }
}

function checkFile(shown: string, real: string, stat: FileStat, options: LoadOptions): void {
  const details = { path: shown, realPath: real, uid: stat.uid, mode: octal(stat.mode) };
  if (!stat.isFile()) {
    throw insecure(
      `${shown}: refusing to use a config path that is ${kindOf(stat)}; fix: point it at a YAML file`,
      details,
    );
  }
  if (!options.allowNonRootOwner && stat.uid !== 0) {
    throw insecure(
      `${shown}: refusing to use a config file owned by uid ${stat.uid}, not root; ` +
        `fix: chown root:root ${real}`,
      details,
    );
  }
  if ((stat.mode & GROUP_OR_OTHER_WRITABLE) !== 0) {
    throw insecure(
      `${shown}: refusing to use a config file writable by group or others ` +
        `(mode ${octal(stat.mode)}); fix: chmod 600 ${real}`,
      details,
    );
  }
}

/**
 * Loads and validates a config file. Throws IMDSG_CONFIG_UNREADABLE when it cannot be read and
 * IMDSG_CONFIG_INSECURE when someone other than root could have written it; returns the
 * parser's problems when it is readable and trusted but invalid.
 */
export async function loadConfigFile(
  path: string,
  fs: ConfigFs = nodeFs,
  options: LoadOptions = {},
): Promise<LoadResult> {
  let real: string;
  let linkStat: FileStat;
  try {
    linkStat = await fs.lstat(path);
    real = await fs.realpath(path);
  } catch (error) {
    throw unreadable(path, error);
  }
  // Through a symlink, whoever can repoint the link chooses the config: check where it lives
  // as well as where it leads.
  const shown = real === path ? path : `${path} (-> ${real})`;
  const directories = linkStat.isSymbolicLink() ? [dirname(path), dirname(real)] : [dirname(real)];
  for (const dir of new Set(directories)) {
    let dirStat: FileStat;
    try {
      dirStat = await fs.stat(dir);
    } catch (error) {
      throw unreadable(dir, error);
    }
    checkDirectory(dir, dirStat, options);
  }

  // Check and read through one descriptor, so the bytes read are the bytes of the file that
  // passed the check even if the path is swapped in between. O_NONBLOCK keeps a FIFO planted
  // at the path from hanging the open before the regular-file check can refuse it.
  let handle: ConfigFileHandle;
  try {
    handle = await fs.open(real, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (error) {
    throw unreadable(path, error);
  }
  let bytes: Uint8Array;
  try {
    checkFile(shown, real, await handle.stat(), options);
    bytes = await handle.readFile();
  } catch (error) {
    if (error instanceof ImdsGuardError) throw error;
    throw unreadable(path, error);
  } finally {
    await handle.close();
  }

  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return {
      ok: false,
      problems: [
        { file: path, line: 1, col: 1, path: "", message: "the file is not valid UTF-8 text" },
      ],
    };
  }
  const digest = createHash("sha256").update(bytes).digest("hex");
  const result = parseConfig(text, path);
  return result.ok ? { ...result, text, digest } : result;
}
