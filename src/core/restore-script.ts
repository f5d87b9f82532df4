// Renders a plan as one `iptables-restore --noflush` transaction for one family: the kernel
// applies all of it or none of it. Only our chains are declared (which flushes them) and only
// our tagged OUTPUT rules are deleted, by their exact saved text.

import type { FamilyPlan } from "./diff.js";
import { planIsEmpty } from "./diff.js";
import type { DesiredFamily } from "./ruleset.js";

/** Empty string when there is nothing to do. */
export function renderRestoreScript(plan: FamilyPlan, desired: DesiredFamily): string {
  if (planIsEmpty(plan)) return "";
  const lines = ["*filter"];
  const chainsToDeclare = plan.refillChains
    ? desired.chains.map((chain) => chain.name)
    : plan.flushChains;
  for (const name of chainsToDeclare) lines.push(`:${name} - [0:0]`);
  for (const rule of plan.deleteJumps) lines.push(`-D OUTPUT ${rule.spec}`);
  if (plan.refillChains) {
    for (const chain of desired.chains) {
      for (const rule of chain.rules) lines.push(`-A ${chain.name} ${rule.spec}`);
    }
  }
  plan.insertJumps.forEach((jump, index) => {
    lines.push(`-I OUTPUT ${index + 1} ${jump.spec}`);
  });
  for (const name of plan.removeChains) lines.push(`-X ${name}`);
  lines.push("COMMIT", "");
  return lines.join("\n");
}
