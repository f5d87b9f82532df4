// Renders the rules the kernel should hold for one policy: per family, our two chains and the
// jumps at the top of OUTPUT. Pure. The text is exactly what iptables-save prints back, so a
// freshly applied ruleset parses and diffs as "nothing to do".

import type { Config, Family, Mode, Policy, Protocols } from "./config-model.js";
import type { Principals } from "./principals.js";
import { ruleTag, tokenizeRule } from "./rule-text.js";

/** Entry chain: counts attempts, lets allowed principals RETURN, sends the rest to REFUSE_CHAIN. */
export const CHAIN = "IMDS-GUARD";
/** Refusal chain: counts, logs (rate-limited) and rejects. One place for "what refusal means". */
export const REFUSE_CHAIN = "IMDS-GUARD-REFUSE";
export const OUR_CHAINS: readonly string[] = [CHAIN, REFUSE_CHAIN];

export const LOG_PREFIX: Record<Mode, string> = {
  enforce: "imds-guard refused: ",
  audit: "imds-guard audit: ",
};
/** Enough to see who tries, too little to flood the kernel log from a busy loop. */
const LOG_LIMIT = "-m limit --limit 10/min --limit-burst 20";
const TCP_SYN = "-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN";

export type RuleRole =
  | { readonly kind: "count-attempts" }
  | { readonly kind: "count-refused" }
  | { readonly kind: "allow"; readonly owner: "uid" | "gid"; readonly id: number }
  | { readonly kind: "deny"; readonly owner: "uid" | "gid"; readonly id: number }
  | { readonly kind: "refuse-rest" }
  | { readonly kind: "log" }
  | { readonly kind: "reject"; readonly protocol: "tcp" | "other" }
  | { readonly kind: "jump"; readonly target: string; readonly via: "destination" | "ctorigdst" };

export interface DesiredRule {
  readonly chain: string;
  /** The rule as iptables-save prints it after "-A CHAIN ", tag included. */
  readonly spec: string;
  readonly tokens: readonly string[];
  readonly tag: string;
  readonly role: RuleRole;
}

export interface DesiredChain {
  readonly name: string;
  readonly rules: readonly DesiredRule[];
}

/**
 * What one family should hold. `installed: false` means "none of ours at all" (a family
 * without targets): the diff then removes whatever of ours is left there.
 */
export interface DesiredFamily {
  readonly family: Family;
  readonly installed: boolean;
  readonly chains: readonly DesiredChain[];
  /** Our jumps, in the order they must stand at positions 1..n of OUTPUT. */
  readonly jumps: readonly DesiredRule[];
}

export type DesiredRuleset = Readonly<Record<Family, DesiredFamily>>;

interface RuleDraft {
  readonly matches: string;
  readonly target: string;
  readonly role: RuleRole;
}

function tagChain(chain: string, drafts: readonly RuleDraft[]): DesiredRule[] {
  const rules: DesiredRule[] = [];
  let previousTag = "";
  for (const draft of drafts) {
    const untagged = [draft.matches, draft.target].filter((part) => part !== "").join(" ");
    const tag = ruleTag(chain, previousTag, untagged);
    const spec = [draft.matches, `-m comment --comment "${tag}"`, draft.target]
      .filter((part) => part !== "")
      .join(" ");
    rules.push({ chain, spec, tokens: tokenizeRule(spec), tag, role: draft.role });
    previousTag = tag;
  }
  return rules;
}

function ownerMatch(owner: "uid" | "gid", id: number): string {
  // --suppl-groups: a process that carries the gid only as a supplementary group (systemd
  // SupplementaryGroups=, not listed in /etc/group) matches too.
  return owner === "uid"
    ? `-m owner --uid-owner ${id}`
    : `-m owner --gid-owner ${id} --suppl-groups`;
}

function owners(principals: Principals): { owner: "uid" | "gid"; id: number }[] {
  return [
    ...principals.uids.map((id) => ({ owner: "uid" as const, id })),
    ...principals.gids.map((id) => ({ owner: "gid" as const, id })),
  ];
}

function entryChain(policy: Policy, protocols: Protocols, principals: Principals): RuleDraft[] {
  const onlyTcp = protocols === "tcp" ? "-p tcp " : "";
  const drafts: RuleDraft[] = [{ matches: TCP_SYN, target: "", role: { kind: "count-attempts" } }];
  if (policy === "allow") {
    for (const { owner, id } of owners(principals)) {
      // RETURN, not ACCEPT: the operator's own later OUTPUT rules still apply.
      drafts.push({
        matches: ownerMatch(owner, id),
        target: "-j RETURN",
        role: { kind: "allow", owner, id },
      });
    }
    drafts.push({
      matches: onlyTcp.trim(),
      target: `-j ${REFUSE_CHAIN}`,
      role: { kind: "refuse-rest" },
    });
  } else {
    for (const { owner, id } of owners(principals)) {
      drafts.push({
        matches: `${onlyTcp}${ownerMatch(owner, id)}`,
        target: `-j ${REFUSE_CHAIN}`,
        role: { kind: "deny", owner, id },
      });
    }
  }
  return drafts;
}

function refuseChain(family: Family, config: Config): RuleDraft[] {
  const drafts: RuleDraft[] = [{ matches: TCP_SYN, target: "", role: { kind: "count-refused" } }];
  // Audit mode exists to show who would be refused, so it always logs.
  if (config.logDenied || config.mode === "audit") {
    drafts.push({
      matches: LOG_LIMIT,
      target: `-j LOG --log-prefix "${LOG_PREFIX[config.mode]}" --log-uid`,
      role: { kind: "log" },
    });
  }
  if (config.mode === "enforce") {
    // tcp-reset: the client learns at once; an ICMP refusal over IPv6 takes about a second.
    drafts.push({
      matches: "-p tcp",
      target: "-j REJECT --reject-with tcp-reset",
      role: { kind: "reject", protocol: "tcp" },
    });
    if (config.protocols === "all") {
      const icmp = family === "ipv4" ? "icmp-port-unreachable" : "icmp6-port-unreachable";
      drafts.push({
        matches: "",
        target: `-j REJECT --reject-with ${icmp}`,
        role: { kind: "reject", protocol: "other" },
      });
    }
  }
  return drafts;
}

/** iptables-save prints a host-sized --ctorigdst without its prefix, -d with it. */
function bareHost(cidr: string): string {
  return cidr.endsWith("/32") || cidr.endsWith("/128")
    ? cidr.slice(0, cidr.lastIndexOf("/"))
    : cidr;
}

function jumps(targets: readonly string[]): RuleDraft[] {
  // Two jumps per target, because each alone can be bypassed: a nat-table OUTPUT DNAT
  // rewrites -d before the filter table sees it, and a raw-table NOTRACK makes conntrack
  // matches fail. The second jump skips packets the first already sent through the chain,
  // so every packet is judged (and counted) exactly once. It also takes only the ORIGINAL
  // direction: the RST or ICMP error our own REJECT sends back to the client belongs to the
  // same connection (reply direction, ctorigdst = target) and has no owner, so judging it
  // would swallow the refusal and leave the client waiting instead of refused.
  return targets.flatMap((target): RuleDraft[] => [
    {
      matches: `-d ${target}`,
      target: `-j ${CHAIN}`,
      role: { kind: "jump", target, via: "destination" },
    },
    {
      matches: `! -d ${target} -m conntrack --ctorigdst ${bareHost(target)} --ctdir ORIGINAL`,
      target: `-j ${CHAIN}`,
      role: { kind: "jump", target, via: "ctorigdst" },
    },
  ]);
}

export function renderFamily(
  family: Family,
  config: Config,
  principals: Principals,
): DesiredFamily {
  const targets = config.targets[family];
  if (targets.length === 0) return { family, installed: false, chains: [], jumps: [] };
  return {
    family,
    installed: true,
    chains: [
      {
        name: CHAIN,
        rules: tagChain(CHAIN, entryChain(config.policy, config.protocols, principals)),
      },
      { name: REFUSE_CHAIN, rules: tagChain(REFUSE_CHAIN, refuseChain(family, config)) },
    ],
    jumps: tagChain("OUTPUT", jumps(targets)),
  };
}

export function renderDesired(config: Config, principals: Principals): DesiredRuleset {
  return {
    ipv4: renderFamily("ipv4", config, principals),
    ipv6: renderFamily("ipv6", config, principals),
  };
}

/** The state `uninstall` aims for. */
export function absentFamily(family: Family): DesiredFamily {
  return { family, installed: false, chains: [], jumps: [] };
}

export function countRules(desired: DesiredFamily): number {
  return desired.jumps.length + desired.chains.reduce((sum, chain) => sum + chain.rules.length, 0);
}
