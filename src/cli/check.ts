// `imds-guard check`: validate the config, resolve its principals and show what it means.
// Reads only; exit 0 valid, 1 invalid (every problem listed).

import type { Principals, ResolvedPrincipal } from "../core/principals.js";
import { resolvePolicy } from "../daemon/policy.js";
import type { Runtime } from "./runtime.js";
import { CommandExit, EXIT, configOrExit } from "./runtime.js";

function describe(entry: ResolvedPrincipal): string {
  if (entry.kind === "user") {
    if (entry.state === "unresolved") return `user ${entry.spec}: NOT FOUND by NSS`;
    const name = entry.name ?? "(no account yet)";
    return `user ${entry.spec}: uid ${entry.uid ?? "?"} ${entry.state === "numeric" ? name : ""}`.trimEnd();
  }
  if (entry.state === "unresolved") return `group ${entry.spec}: NOT FOUND by NSS`;
  const members = entry.members.map((member) => `${member.name}(${member.uid})`).join(", ");
  return `group ${entry.spec}: gid ${entry.gid ?? "?"}, members: ${members || "(none listed)"}`;
}

export function summarisePrincipals(principals: Principals): string[] {
  return principals.entries.map((entry) => `  ${describe(entry)}`);
}

export async function checkCommand(runtime: Runtime, configPath: string): Promise<number> {
  const { config, warnings } = await configOrExit(runtime, configPath);
  const policy = await resolvePolicy(config, runtime.lookup);
  const lines = [
    `${configPath}: valid`,
    `mode: ${config.mode}${config.mode === "audit" ? " (nothing is refused; would-be refusals are logged and counted)" : ""}`,
    config.policy === "allow"
      ? "policy: allow-list (only these principals reach the targets)"
      : "policy: deny-list (these principals are refused; everyone else passes)",
    "principals:",
    ...(policy.principals.entries.length > 0
      ? summarisePrincipals(policy.principals)
      : ["  (none)"]),
    `matched ids: uids [${policy.principals.uids.join(", ")}], gids [${policy.principals.gids.join(", ")}]`,
    `targets ipv4: ${config.targets.ipv4.join(", ") || "(none)"}`,
    `targets ipv6: ${config.targets.ipv6.join(", ") || "(none)"}`,
    `protocols: ${config.protocols}, backend: ${config.backend}, log_denied: ${config.logDenied}`,
    `listen: ${config.listen.host}:${config.listen.port}, drift check every ${config.driftCheckIntervalMs} ms`,
  ];
  runtime.out(lines.join("\n"));
  for (const warning of warnings) runtime.err(`warning: ${warning}`);
  for (const line of policy.unresolved)
    runtime.err(`${config.policy === "deny" ? "error" : "warning"}: ${line}`);
  if (config.policy === "deny" && policy.unresolved.length > 0) throw new CommandExit(EXIT.failure);
  return EXIT.ok;
}
