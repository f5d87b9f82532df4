// The textual form of one iptables rule as iptables-save prints it and iptables-restore reads
// it, and the ownership tag we put in each rule's comment. Rules are compared as token lists,
// so the quoting iptables-save chooses ("imds-guard:x" vs imds-guard:x) never looks like drift.

import { createHash } from "node:crypto";

export const TAG_PREFIX = "imds-guard:";

/** Splits a rule spec the way iptables-restore does: whitespace, with "double quotes". */
export function tokenizeRule(spec: string): string[] {
  const tokens: string[] = [];
  let current = "";
  let inToken = false;
  let quoted = false;
  for (let i = 0; i < spec.length; i++) {
    const ch = spec.charAt(i);
    if (quoted) {
      // iptables-save escapes ", \ and ' with a backslash; iptables-restore unescapes any.
      if (ch === "\\" && i + 1 < spec.length) {
        current += spec.charAt(i + 1);
        i++;
      } else if (ch === '"') {
        quoted = false;
      } else {
        current += ch;
      }
    } else if (ch === '"') {
      quoted = true;
      inToken = true;
    } else if (ch === " " || ch === "\t") {
      if (inToken) tokens.push(current);
      current = "";
      inToken = false;
    } else {
      current += ch;
      inToken = true;
    }
  }
  if (inToken) tokens.push(current);
  return tokens;
}

/** Token lists compare equal exactly when iptables reads them as the same rule. */
export function sameTokens(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((token, i) => token === b[i]);
}

/** The comment tag of a rule, if it carries ours. */
export function tagOf(tokens: readonly string[]): string | undefined {
  for (let i = 0; i < tokens.length - 1; i++) {
    if (tokens[i] === "--comment") {
      const comment = tokens[i + 1] ?? "";
      if (comment.startsWith(TAG_PREFIX)) return comment;
    }
  }
  return undefined;
}

/**
 * Felix's scheme: each rule's tag hashes its chain, the previous rule's tag and its own
 * text, so a tag says both "this is ours" and "this is exactly the rule at this place".
 */
export function ruleTag(chain: string, previousTag: string, ruleWithoutTag: string): string {
  const digest = createHash("sha256")
    .update(`${chain}\u0000${previousTag}\u0000${ruleWithoutTag}`)
    .digest("hex");
  return TAG_PREFIX + digest.slice(0, 16);
}
