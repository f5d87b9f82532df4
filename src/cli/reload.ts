// `imds-guard reload`: ExecReload for the unit. Sends SIGHUP to the daemon and returns only once
// the daemon has finished the reload (its /status counts completed reloads), so `systemctl
// reload` means "done" even on systemd < 253, which lacks Type=notify-reload.

import type { Runtime } from "./runtime.js";
import { EXIT, configOrExit } from "./runtime.js";

export interface ReloadOptions {
  readonly configPath: string;
  readonly pid: number;
  readonly timeoutMs?: number;
}

async function completedReloads(url: string): Promise<number | undefined> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(2_000) });
    if (!response.ok) return undefined;
    const body = (await response.json()) as { daemon?: { reloadsCompleted?: unknown } };
    const count = body.daemon?.reloadsCompleted;
    return typeof count === "number" ? count : undefined;
  } catch {
    return undefined;
  }
}

export async function reloadCommand(runtime: Runtime, options: ReloadOptions): Promise<number> {
  const { config } = await configOrExit(runtime, options.configPath);
  const host = config.listen.host.includes(":") ? `[${config.listen.host}]` : config.listen.host;
  const url = `http://${host}:${config.listen.port}/status`;
  const before = await completedReloads(url);
  try {
    process.kill(options.pid, "SIGHUP");
  } catch (error) {
    runtime.err(
      `imds-guard reload: cannot signal pid ${options.pid}: ${error instanceof Error ? error.message : String(error)}`,
    );
    return EXIT.failure;
  }
  if (before === undefined) {
    runtime.err(
      `imds-guard reload: sent SIGHUP to ${options.pid}; ${url} did not answer, so completion is not confirmed`,
    );
    return EXIT.ok;
  }
  const deadline = Date.now() + (options.timeoutMs ?? 20_000);
  while (Date.now() < deadline) {
    const now = await completedReloads(url);
    if (now !== undefined && now > before) {
      runtime.out(`reloaded (pid ${options.pid})`);
      return EXIT.ok;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  runtime.err(
    `imds-guard reload: pid ${options.pid} did not finish the reload in time; see its log (the last good policy stays in force)`,
  );
  return EXIT.failure;
}
