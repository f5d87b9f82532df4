// `imds-guard plan`: what `apply` would change, in words and as the exact restore script per
// family. Reads the kernel (iptables-save) and changes nothing. Exit 0 in sync, 3 pending.

import { reconcileFamily } from "../daemon/reconcile.js";
import type { Runtime } from "./runtime.js";
import { EXIT, prepare } from "./runtime.js";

export async function planCommand(runtime: Runtime, configPath: string): Promise<number> {
  const { dataplane, policy, warnings } = await prepare(runtime, configPath);
  for (const warning of warnings) runtime.err(`warning: ${warning}`);
  runtime.out(`backend: iptables-${dataplane.iptables.flavour} (${dataplane.decision.reason})`);
  let pending = false;
  let failed = false;
  for (const family of dataplane.families) {
    const outcome = await reconcileFamily(dataplane.iptables, policy.desired[family], false);
    if (outcome.error) {
      runtime.err(`${family}: error [${outcome.error.code}]: ${outcome.error.message}`);
      failed = true;
      continue;
    }
    if (outcome.script === "") {
      runtime.out(`${family}: in sync, nothing to do`);
      continue;
    }
    pending = true;
    runtime.out(`${family}: changes pending:`);
    for (const finding of outcome.plan.findings)
      runtime.out(`  - ${finding.reason}: ${finding.detail}`);
    runtime.out(
      `${family}: restore script (${family === "ipv4" ? "iptables" : "ip6tables"}-restore --noflush):`,
    );
    runtime.out(outcome.script.trimEnd());
  }
  if (failed) return EXIT.failure;
  return pending ? EXIT.pending : EXIT.ok;
}
