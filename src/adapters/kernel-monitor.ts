// Turns kernel ruleset changes into triggers: a long-lived `nft monitor` child, read line by
// line. Lines are never parsed for meaning (events carry no data); the daemon re-reads the
// ruleset. The child is restarted with capped backoff when it dies.

import { execa } from "execa";
import { FIXED_ENV } from "./command-runner.js";

export interface KernelMonitor {
  readonly up: boolean;
  stop(): Promise<void>;
}

export interface KernelMonitorOptions {
  readonly onEvent: () => void;
  readonly onStateChange: (up: boolean, detail?: string) => void;
  readonly argv?: readonly string[];
}

export function startKernelMonitor(options: KernelMonitorOptions): KernelMonitor {
  const [file = "nft", ...args] = options.argv ?? ["nft", "monitor", "ruleset"];
  let stopped = false;
  let up = false;
  let failures = 0;
  let child: ReturnType<typeof execa> | undefined;
  let restartTimer: NodeJS.Timeout | undefined;

  const start = (): void => {
    if (stopped) return;
    const proc = execa(file, args, {
      extendEnv: false,
      env: FIXED_ENV,
      reject: false,
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
      buffer: { stdout: false, stderr: true },
    });
    child = proc;
    proc.stdout.setEncoding("utf8");
    let startedAt = Date.now();
    proc.on("spawn", () => {
      startedAt = Date.now();
      up = true;
      options.onStateChange(true);
    });
    let partial = "";
    proc.stdout.on("data", (chunk: string) => {
      partial += chunk;
      const lines = partial.split("\n");
      partial = lines.pop() ?? "";
      if (lines.some((line) => line.trim() !== "")) options.onEvent();
    });
    void proc.then((result) => {
      up = false;
      if (stopped) return;
      options.onStateChange(
        false,
        `nft monitor exited (${result.exitCode ?? result.signal ?? "?"}): ${result.stderr.trim()}`,
      );
      // A child that ran for a while before dying restarts quickly; one that keeps dying backs off.
      failures = Date.now() - startedAt > 30_000 ? 1 : failures + 1;
      restartTimer = setTimeout(start, Math.min(30_000, 500 * 2 ** (failures - 1)));
      // The ruleset may have changed while nobody was listening.
      options.onEvent();
    });
  };
  start();

  return {
    get up() {
      return up;
    },
    async stop() {
      stopped = true;
      if (restartTimer) clearTimeout(restartTimer);
      if (child) {
        child.kill("SIGTERM");
        await child.catch(() => undefined);
      }
    },
  };
}
