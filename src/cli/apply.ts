// `imds-guard apply`: one reconcile of both families, each one atomic restore transaction,
// verified by reading back. Idempotent: when the kernel already matches, nothing is written.

import { heldDenialsFrom } from "../daemon/held-denials.js";
import { resolvePolicy } from "../daemon/policy.js";
import { reconcileFamily } from "../daemon/reconcile.js";
import type { Runtime } from "./runtime.js";
import { openDataplane } from "../daemon/dataplane.js";
import { EXIT, configOrExit } from "./runtime.js";

export async function applyCommand(runtime: Runtime, configPath: string): Promise<number> {
  const { config, warnings } = await configOrExit(runtime, configPath);
  const dataplane = await openDataplane(runtime, config.backend);
  const policy = await resolvePolicy(
    config,
    runtime.lookup,
    heldDenialsFrom(dataplane.iptables, dataplane.families),
  );
  for (const warning of [...warnings, ...dataplane.warnings, ...policy.unresolved])
    runtime.err(`warning: ${warning}`);
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
