// `imds-guard apply`: one reconcile of both families, each one atomic restore transaction,
// verified by reading back. Idempotent: when the kernel already matches, nothing is written.

import { reconcileFamily } from "../daemon/reconcile.js";
import type { Runtime } from "./runtime.js";
import { EXIT, prepare } from "./runtime.js";

export async function applyCommand(runtime: Runtime, configPath: string): Promise<number> {
  const { dataplane, policy, warnings } = await prepare(runtime, configPath);
  for (const warning of warnings) runtime.err(`warning: ${warning}`);
  let failed = false;
  for (const family of dataplane.families) {
    const outcome = await reconcileFamily(dataplane.iptables, policy.desired[family], true);
    if (outcome.error) {
      failed = true;
      runtime.err(`${family}: error [${outcome.error.code}]: ${outcome.error.message}`);
      const stderr = outcome.error.details.stderr;
      if (typeof stderr === "string" && stderr.trim() !== "")
        runtime.err(`  stderr: ${stderr.trim()}`);
      if (outcome.script !== "") runtime.err(`  restore input was:\n${outcome.script}`);
      continue;
    }
    runtime.out(
      outcome.wrote
        ? `${family}: applied with iptables-${dataplane.iptables.flavour} (${outcome.plan.findings.map((f) => f.reason).join(", ")})`
        : `${family}: already in sync, nothing written`,
    );
  }
  return failed ? EXIT.failure : EXIT.ok;
}
