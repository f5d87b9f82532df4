// Compares what the kernel holds with what the policy wants, per family, and says what to do.
// Only rules carrying our tag and our own chains are ever planned for change; a foreign rule
// is never deleted or moved (ours move above it instead).

import type { Family } from "./config-model.js";
import type { ObservedTable, SavedRule } from "./iptables-save.js";
import { ourRulesIn } from "./iptables-save.js";
import { sameTokens } from "./rule-text.js";
import type { DesiredFamily, DesiredRule } from "./ruleset.js";
import { OUR_CHAINS } from "./ruleset.js";

export type DriftReason =
  | "missing_chain"
  | "chain_mismatch"
  | "missing_jump"
  | "displaced_jump"
  | "duplicate"
  | "stale_rule"
  | "foreign_reference";

export interface DriftFinding {
  readonly reason: DriftReason;
  readonly detail: string;
}

export interface FamilyPlan {
  readonly family: Family;
  readonly findings: readonly DriftFinding[];
  /** Declare (which flushes) our chains and fill them with the desired rules. */
  readonly refillChains: boolean;
  /** Our OUTPUT rules to delete, by their exact saved text. */
  readonly deleteJumps: readonly SavedRule[];
  /** Jumps to insert at positions 1..n of OUTPUT, after the deletions. */
  readonly insertJumps: readonly DesiredRule[];
  /** Our chains to empty without refilling (family without targets, or uninstall). */
  readonly flushChains: readonly string[];
  /** Our chains to delete after emptying them. */
  readonly removeChains: readonly string[];
}

export function planIsEmpty(plan: FamilyPlan): boolean {
  return (
    !plan.refillChains &&
    plan.deleteJumps.length === 0 &&
    plan.insertJumps.length === 0 &&
    plan.flushChains.length === 0 &&
    plan.removeChains.length === 0
  );
}

/** Rules without our tag that jump (-j) or go (-g) to `chain`. */
function foreignReferences(observed: ObservedTable, chain: string): SavedRule[] {
  const found: SavedRule[] = [];
  for (const rules of observed.chains.values()) {
    for (const rule of rules) {
      if (rule.tag !== undefined) continue;
      if (
        rule.tokens.some(
          (token, i) => (token === "-j" || token === "-g") && rule.tokens[i + 1] === chain,
        )
      )
        found.push(rule);
    }
  }
  return found;
}

function chainFindings(desired: DesiredFamily, observed: ObservedTable): DriftFinding[] {
  const findings: DriftFinding[] = [];
  for (const chain of desired.chains) {
    const rules = observed.chains.get(chain.name);
    if (rules === undefined) {
      findings.push({ reason: "missing_chain", detail: `chain ${chain.name} does not exist` });
      continue;
    }
    const same =
      rules.length === chain.rules.length &&
      rules.every((rule, i) => {
        const wanted = chain.rules[i];
        return wanted !== undefined && sameTokens(rule.tokens, wanted.tokens);
      });
    if (!same) {
      findings.push({
        reason: "chain_mismatch",
        detail: `chain ${chain.name} holds ${rules.length} rule(s) that differ from the ${chain.rules.length} wanted`,
      });
    }
  }
  return findings;
}

function jumpFindings(desired: DesiredFamily, observed: ObservedTable): DriftFinding[] {
  const output = observed.chains.get("OUTPUT") ?? [];
  const ours = ourRulesIn(observed, "OUTPUT");
  const findings: DriftFinding[] = [];
  desired.jumps.forEach((jump, index) => {
    const matches = ours.filter((rule) => sameTokens(rule.tokens, jump.tokens));
    const first = matches[0];
    if (first === undefined) {
      findings.push({ reason: "missing_jump", detail: `OUTPUT lacks: ${jump.spec}` });
    } else if (matches.length > 1) {
      findings.push({
        reason: "duplicate",
        detail: `OUTPUT holds ${matches.length} copies of: ${jump.spec}`,
      });
    } else if (output[index] !== first) {
      findings.push({
        reason: "displaced_jump",
        detail: `OUTPUT rule ${first.position} should be at ${index + 1}: ${jump.spec}`,
      });
    }
  });
  for (const rule of ours) {
    if (!desired.jumps.some((jump) => sameTokens(rule.tokens, jump.tokens))) {
      findings.push({
        reason: "stale_rule",
        detail: `OUTPUT rule ${rule.position} is ours but not wanted: ${rule.spec}`,
      });
    }
  }
  return findings;
}

/** What must change so `observed` holds exactly `desired`. Empty when already in sync. */
export function diffFamily(desired: DesiredFamily, observed: ObservedTable): FamilyPlan {
  const ourJumps = ourRulesIn(observed, "OUTPUT");
  if (!desired.installed) {
    const present = OUR_CHAINS.filter((name) => observed.chains.has(name));
    const referenced = present.filter((name) => foreignReferences(observed, name).length > 0);
    const findings: DriftFinding[] = [
      ...ourJumps.map((rule) => ({
        reason: "stale_rule" as const,
        detail: `OUTPUT rule ${rule.position} is ours but not wanted: ${rule.spec}`,
      })),
      ...present.map((name) => ({
        reason: "stale_rule" as const,
        detail: `chain ${name} is not wanted`,
      })),
      ...referenced.map((name) => ({
        reason: "foreign_reference" as const,
        detail: `chain ${name} is emptied but kept: rules that are not ours jump to it (${foreignReferences(
          observed,
          name,
        )
          .map((rule) => `${rule.chain} ${rule.position}`)
          .join(", ")})`,
      })),
    ];
    return {
      family: desired.family,
      findings,
      refillChains: false,
      deleteJumps: ourJumps,
      insertJumps: [],
      flushChains: present.filter(
        (name) => (observed.chains.get(name)?.length ?? 0) > 0 || !referenced.includes(name),
      ),
      // The kernel refuses to delete a chain that is still referenced, which would fail the
      // whole transaction: keep such a chain (empty) rather than touch the foreign rule.
      removeChains: present.filter((name) => !referenced.includes(name)),
    };
  }
  const chainProblems = chainFindings(desired, observed);
  const jumpProblems = jumpFindings(desired, observed);
  // Any jump problem rewrites all our jumps in one go: simpler to reason about than a
  // minimal edit, and still one atomic transaction, so no packet sees a gap.
  const rewriteJumps = jumpProblems.length > 0;
  return {
    family: desired.family,
    findings: [...chainProblems, ...jumpProblems],
    refillChains: chainProblems.length > 0,
    deleteJumps: rewriteJumps ? ourJumps : [],
    insertJumps: rewriteJumps ? desired.jumps : [],
    flushChains: [],
    removeChains: [],
  };
}
