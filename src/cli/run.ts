// `imds-guard run`: the guard daemon. Wires the real adapters into the daemon loop.

import type { Runtime } from "./runtime.js";

export interface RunOptions {
  readonly configPath: string;
  readonly logLevel: string;
}

export function runCommand(runtime: Runtime, options: RunOptions): Promise<number> {
  runtime.err(`imds-guard run: not yet available (config ${options.configPath}, log level ${options.logLevel})`);
  return Promise.resolve(1);
}
