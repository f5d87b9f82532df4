// One reconcile of both families: read, diff, and (unless dry) write one restore transaction
// per family, then read back to verify. A family that fails never stops the other, and a
// failure never removes rules: the kernel keeps what it had.

import type { Family } from "../core/config-model.js";
import type { FamilyPlan } from "../core/diff.js";
import { diffFamily, planIsEmpty } from "../core/diff.js";
import { ImdsGuardError } from "../core/errors.js";
import type { ObservedTable } from "../core/iptables-save.js";
import { parseIptablesSave } from "../core/iptables-save.js";
import { renderRestoreScript } from "../core/restore-script.js";
import type { DesiredFamily } from "../core/ruleset.js";
import type { IptablesBackend } from "../adapters/iptables.js";

export interface FamilyOutcome {
  readonly family: Family;
  /** The plan as found before writing (its findings are the drift that was seen). */
  readonly plan: FamilyPlan;
  readonly script: string;
  readonly wrote: boolean;
  /** The kernel as last read (after the write, when there was one). */
  readonly observed?: ObservedTable;
  /** The kernel as read before a write, whose counters the write resets by refilling our chains. */
  readonly before?: ObservedTable;
  readonly error?: ImdsGuardError;
}

async function readFamily(iptables: IptablesBackend, family: Family): Promise<ObservedTable> {
  return parseIptablesSave(await iptables.save(family));
}

function asGuardError(error: unknown, family: Family): ImdsGuardError {
  if (error instanceof ImdsGuardError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new ImdsGuardError("IMDSG_IPTABLES_RESTORE", `${family}: ${message}`, { family });
}

export async function reconcileFamily(
  iptables: IptablesBackend,
  desired: DesiredFamily,
  write: boolean,
): Promise<FamilyOutcome> {
  const family = desired.family;
  let plan: FamilyPlan | undefined;
  let script = "";
  try {
    const before = await readFamily(iptables, family);
    plan = diffFamily(desired, before);
    script = renderRestoreScript(plan, desired);
    if (!write || planIsEmpty(plan))
      return { family, plan, script, wrote: false, observed: before };
    await iptables.restore(family, script);
    // Reads verify writes: a difference right after a successful restore means another
    // manager rewrote the table in between, or the kernel normalised a rule differently.
    const after = await readFamily(iptables, family);
    const check = diffFamily(desired, after);
    if (check.findings.length > 0) {
      return {
        family,
        plan,
        script,
        wrote: true,
        observed: after,
        before,
        error: new ImdsGuardError(
          "IMDSG_IPTABLES_FIGHT",
          `${family}: the kernel differs from the policy right after a successful restore (${check.findings.map((f) => f.reason).join(", ")}); is another firewall manager rewriting OUTPUT?`,
          { family, input: script, findings: check.findings },
        ),
      };
    }
    return { family, plan, script, wrote: true, observed: after, before };
  } catch (error) {
    const emptyPlan: FamilyPlan = {
      family,
      findings: [],
      refillChains: false,
      deleteJumps: [],
      insertJumps: [],
      flushChains: [],
      removeChains: [],
    };
    return {
      family,
      plan: plan ?? emptyPlan,
      script,
      wrote: false,
      error: asGuardError(error, family),
    };
  }
}
