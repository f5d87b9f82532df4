// `imds-guard status`: what is installed now per family, compared with the config.
// Exit 0 in sync, 3 drifted, 1 not installed.

import { collectStatus, formatStatus } from "../daemon/status-report.js";
import type { Runtime } from "./runtime.js";
import { EXIT, prepare } from "./runtime.js";

export async function statusCommand(
  runtime: Runtime,
  configPath: string,
  json: boolean,
): Promise<number> {
  const { dataplane, policy } = await prepare(runtime, configPath);
  const report = await collectStatus(
    policy,
    dataplane.iptables,
    dataplane.families,
    dataplane.warnings,
  );
  runtime.out(json ? JSON.stringify(report, null, 2) : formatStatus(report));
  if (!report.installed) return EXIT.failure;
  return report.inSync ? EXIT.ok : EXIT.pending;
}
