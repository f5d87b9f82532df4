// Runs external programs (iptables, getent, nft) for the adapters. Always an argv array through
// execa, never a shell; a fixed PATH and LC_ALL=C so output parses the same everywhere, and a
// timeout so a wedged program cannot hang the daemon.

import { execa } from "execa";

export interface CommandResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
}

export interface CommandOptions {
  readonly input?: string;
  readonly timeoutMs?: number;
}

export type CommandRunner = (
  file: string,
  args: readonly string[],
  options?: CommandOptions,
) => Promise<CommandResult>;

export const FIXED_ENV = {
  PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  LC_ALL: "C",
} as const;

/**
 * The real runner. `prefix` wraps every command (e.g. ["ip", "netns", "exec", NAME]) so a
 * caller can aim the same adapter at a network namespace without touching the host.
 */
export function createCommandRunner(prefix: readonly string[] = []): CommandRunner {
  return async (file, args, options = {}) => {
    const [command, ...rest] = prefix.length > 0 ? [...prefix, file, ...args] : [file, ...args];
    const result = await execa(command ?? file, rest, {
      reject: false,
      extendEnv: false,
      env: FIXED_ENV,
      timeout: options.timeoutMs ?? 30_000,
      stripFinalNewline: false,
      ...(options.input === undefined ? { stdin: "ignore" as const } : { input: options.input }),
    });
    return {
      exitCode: result.exitCode ?? -1,
      stdout: result.stdout,
      stderr: result.stderr,
      timedOut: result.timedOut,
    };
  };
}
