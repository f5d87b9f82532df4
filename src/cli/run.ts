// `imds-guard run`: the guard daemon, with the real adapters wired in.

import { createLogger } from "../adapters/logger.js";
import { createNotifier } from "../adapters/systemd-notify.js";
import { startDaemon } from "../daemon/daemon.js";
import type { Runtime } from "./runtime.js";

export interface RunOptions {
  readonly configPath: string;
  readonly logLevel: string;
}

export async function runCommand(runtime: Runtime, options: RunOptions): Promise<number> {
  const logger = createLogger({ level: options.logLevel });
  const notifier = createNotifier({
    onError: (error) => {
      logger.warn({ err: error }, "sd_notify failed");
    },
  });
  const daemon = await startDaemon({
    configPath: options.configPath,
    logger,
    notifier,
    probes: runtime,
    lookup: runtime.lookup,
    loadConfig: runtime.loadConfig,
    onSignals: ({ reload, stop }) => {
      process.on("SIGHUP", reload);
      process.on("SIGTERM", stop);
      process.on("SIGINT", stop);
      return () => {
        process.off("SIGHUP", reload);
        process.off("SIGTERM", stop);
        process.off("SIGINT", stop);
      };
    },
  });
  return daemon.done;
}
