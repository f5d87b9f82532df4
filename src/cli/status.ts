// `imds-guard status`: what is installed now per family, compared with the config.
// Exit 0 in sync, 3 drifted, 1 not installed.

import { heldDenialsFrom } from "../daemon/held-denials.js";
import { resolvePolicy } from "../daemon/policy.js";
import { collectStatus, formatStatus } from "../daemon/status-report.js";
import type { Runtime } from "./runtime.js";
import { openDataplane } from "../daemon/dataplane.js";
import { EXIT, configOrExit } from "./runtime.js";

export async function statusCommand(
  runtime: Runtime,
  configPath: string,
  json: boolean,
): Promise<number> {
  const { config } = await configOrExit(runtime, configPath);
  const dataplane = await openDataplane(runtime, config.backend);
  const policy = await resolvePolicy(
    config,
    runtime.lookup,
    heldDenialsFrom(dataplane.iptables, dataplane.families),
  );
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
