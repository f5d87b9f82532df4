// The report behind `imds-guard status` and the daemon's GET /status: the kernel as read now,
// compared with the policy, per family. Reads only.

import type { Family } from "../core/config-model.js";
import { parseIptablesSave } from "../core/iptables-save.js";
import type { FamilyStatus } from "../core/status.js";
import { familyStatus } from "../core/status.js";
import type { IptablesBackend } from "../adapters/iptables.js";
import type { ResolvedPolicy } from "./policy.js";

export interface StatusReport {
  readonly backend: string;
  readonly mode: string;
  readonly policy: string;
  readonly installed: boolean;
  readonly inSync: boolean;
  readonly families: Partial<Record<Family, FamilyStatus>>;
  readonly unresolved: readonly string[];
  readonly warnings: readonly string[];
}

export async function collectStatus(
  policy: ResolvedPolicy,
  iptables: IptablesBackend,
  families: readonly Family[],
  warnings: readonly string[],
): Promise<StatusReport> {
  const report: Partial<Record<Family, FamilyStatus>> = {};
  for (const family of families) {
    const observed = parseIptablesSave(await iptables.save(family));
    report[family] = familyStatus(policy.desired[family], observed, policy.principals);
  }
  const statuses = Object.values(report);
  return {
    backend: iptables.flavour,
    mode: policy.config.mode,
    policy: policy.config.policy,
    installed: statuses.some((status) => status.installed),
    inSync: statuses.every((status) => status.inSync),
    families: report,
    unresolved: policy.unresolved,
    warnings,
  };
}

export function formatStatus(report: StatusReport): string {
  const lines = [
    `backend: iptables-${report.backend}`,
    `mode: ${report.mode}, ${report.policy}-list`,
    `state: ${!report.installed ? "NOT INSTALLED" : report.inSync ? "in sync with the config" : "DRIFTED from the config"}`,
  ];
  for (const status of Object.values(report.families)) {
    lines.push(
      "",
      `${status.family}: ${status.installed ? `${status.rules} rule(s)` : "not installed"}${status.inSync ? "" : " (drifted)"}`,
    );
    lines.push(`  targets: ${status.targets.join(", ") || "(none)"}`);
    for (const jump of status.jumps) lines.push(`  OUTPUT ${jump.position}: ${jump.spec}`);
    for (const finding of status.findings)
      lines.push(`  drift: ${finding.reason}: ${finding.detail}`);
    for (const principal of status.principals) {
      const names = principal.names.length > 0 ? ` (${principal.names.join(", ")})` : "";
      lines.push(
        `  ${principal.verdict} ${principal.owner} ${principal.id}${names}: ${principal.packets} packet(s)`,
      );
    }
    lines.push(`  TCP connection attempts: ${status.attempts}, refused: ${status.refused}`);
  }
  for (const line of report.unresolved) lines.push(`unresolved: ${line}`);
  for (const warning of report.warnings) lines.push(`warning: ${warning}`);
  return lines.join("\n");
}
