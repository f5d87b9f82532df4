// Parses and validates the text of /etc/imds-guard/config.yaml into a Config. Pure: no I/O.
// This is a security boundary: every value that later reaches an iptables-restore script
// (names, addresses) is checked against a closed alphabet here, and nothing is guessed.
// Every problem is reported at once, each with the line and column of the YAML node.

import { isIPv4, isIPv6 } from "node:net";
import { LineCounter, isAlias, isMap, isScalar, isSeq, parseDocument, visit } from "yaml";
import type { Document } from "yaml";
import { z } from "zod";
import type { BackendChoice, Config, Family, Mode, Protocols } from "./config-model.js";

export interface ConfigProblem {
  readonly file: string;
  /** 1-based. */
  readonly line: number;
  /** 1-based. */
  readonly col: number;
  /** Dotted key path such as "allow.users.1"; "" for the document itself. */
  readonly path: string;
  readonly message: string;
}

export type ConfigResult =
  | { readonly ok: true; readonly config: Config; readonly warnings: string[] }
  | { readonly ok: false; readonly problems: ConfigProblem[] };

export function formatProblem(p: ConfigProblem): string {
  const where = p.path === "" ? "" : `${p.path}: `;
  return `${p.file}:${p.line}:${p.col}: ${where}${p.message}`;
}

export const DEFAULT_TARGETS: readonly string[] = ["169.254.169.254", "fd00:ec2::254"];
export const DEFAULT_LISTEN = "127.0.0.1:9877";

// Shorter prefixes than these would send (nearly) all traffic through the guard: a typo.
const MIN_PREFIX: Readonly<Record<Family, number>> = { ipv4: 8, ipv6: 16 };
const FAMILY_NAME: Readonly<Record<Family, string>> = { ipv4: "IPv4", ipv6: "IPv6" };

// ---------------------------------------------------------------------------------------------
// Field checkers. Each takes the raw YAML value and either normalises it or says, in words an
// operator can act on, what is allowed. They are wired into the zod schema below.

/** The outcome of checking one raw value: its normalised form, or what is wrong with it. */
export type Checked<T> = { ok: true; value: T } | { ok: false; message: string };

const ok = <T>(value: T): Checked<T> => ({ ok: true, value });
const fail = (message: string): Checked<never> => ({ ok: false, message });

/**
 * Renders a config value for an error message. Strings are JSON-quoted and everything outside
 * printable ASCII is escaped, so a hostile value cannot forge log lines or terminal escapes.
 */
export function describeValue(value: unknown): string {
  if (value === null || value === undefined) return "an empty value";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "a mapping";
  if (typeof value === "string") {
    const cut = value.length > 40 ? `${value.slice(0, 40)}...` : value;
    return JSON.stringify(cut).replace(
      /[^\x20-\x7e]/g,
      (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
    );
  }
  return typeof value === "number" || typeof value === "boolean" ? String(value) : typeof value;
}

// uid_t is 32 bits and (uid_t)-1 means "no change" to the kernel, so it is never a real id.
const MAX_ID = 4294967294;
const DECIMAL_ID = /^\d+$/;
// shadow-utils' default, relaxed to upper case and dots as Debian allows. The character class
// is closed on purpose: no whitespace, quotes, or shell/iptables metacharacters can get through.
const PRINCIPAL_NAME = /^[A-Za-z_][A-Za-z0-9_.-]*\$?$/;
const MAX_NAME_LENGTH = 32;

type PrincipalKind = "user" | "group";

export function checkPrincipal(value: unknown, kind: PrincipalKind): Checked<string> {
  const idWord = kind === "user" ? "uid" : "gid";
  const idRange = `${idWord} must be a whole number from 0 to ${MAX_ID}, got ${describeValue(value)}`;
  if (typeof value === "number") {
    return Number.isInteger(value) && value >= 0 && value <= MAX_ID
      ? ok(String(value))
      : fail(idRange);
  }
  if (typeof value !== "string") {
    return fail(`must be a ${kind} name or a numeric ${idWord}, got ${describeValue(value)}`);
  }
  if (DECIMAL_ID.test(value)) {
    const id = Number(value);
    return id <= MAX_ID ? ok(String(id)) : fail(idRange);
  }
  if (value.length <= MAX_NAME_LENGTH && PRINCIPAL_NAME.test(value)) return ok(value);
  return fail(
    `${describeValue(value)} is not a valid ${kind} name: a name starts with a letter or "_", ` +
      `continues with letters, digits, "_", "." or "-", may end in "$", and is at most ` +
      `${MAX_NAME_LENGTH} characters; or give a numeric ${idWord}`,
  );
}

const DURATION = /^(\d+)(ms|s|m|h)$/;
const UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

export function checkDuration(value: unknown, minMs: number, maxMs: number): Checked<number> {
  const match = typeof value === "string" ? DURATION.exec(value) : null;
  const amount = match?.[1];
  const unit = match?.[2];
  if (amount === undefined || unit === undefined) {
    return fail(
      `must be a duration such as "500ms", "2s", "1m" or "1h", got ${describeValue(value)}`,
    );
  }
  const ms = Number(amount) * (UNIT_MS[unit] ?? Number.NaN);
  if (!(ms >= minMs && ms <= maxMs)) {
    return fail(
      `must be between ${formatDuration(minMs)} and ${formatDuration(maxMs)}, ` +
        `got ${describeValue(value)}`,
    );
  }
  return ok(ms);
}

function formatDuration(ms: number): string {
  for (const unit of ["h", "m", "s"]) {
    const size = UNIT_MS[unit] ?? 1;
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

// ---------------------------------------------------------------------------------------------
// Addresses. Targets become CIDRs in one canonical spelling (host bits cleared, IPv6 compressed
// and lower case as RFC 5952 says) so that the same network always compares equal.

export interface Cidr {
  readonly family: Family;
  /** Canonical, always with a prefix: "169.254.169.254/32", "fd00:ec2::254/128". */
  readonly cidr: string;
  readonly prefix: number;
  /** True when the text had bits set beyond the prefix, which were cleared. */
  readonly hostBitsSet: boolean;
}

/** Parses "addr" or "addr/prefix" (IPv4 or IPv6, no zone id) into its canonical CIDR. */
export function parseCidr(text: string): Checked<Cidr> {
  const slash = text.indexOf("/");
  const addr = slash === -1 ? text : text.slice(0, slash);
  const prefixText = slash === -1 ? undefined : text.slice(slash + 1);
  const family: Family | undefined = isIPv4(addr)
    ? "ipv4"
    : isIPv6(addr) && !addr.includes("%")
      ? "ipv6"
      : undefined;
  if (family === undefined) {
    return fail(
      `${describeValue(text)} is not an IPv4 or IPv6 address (optionally with /prefix, ` +
        `such as 169.254.169.254 or fd00:ec2::254/128)`,
    );
  }
  const bits = family === "ipv4" ? 32 : 128;
  if (prefixText !== undefined && !/^\d{1,3}$/.test(prefixText)) {
    return fail(`${describeValue(text)} has a malformed prefix; write /0 to /${bits}`);
  }
  const prefix = prefixText === undefined ? bits : Number(prefixText);
  if (prefix > bits) {
    return fail(`${describeValue(text)}: an ${FAMILY_NAME[family]} prefix must be /0 to /${bits}`);
  }
  const words = family === "ipv4" ? ipv4Words(addr) : ipv6Words(addr);
  const masked = maskWords(words, prefix);
  const hostBitsSet = masked.some((w, i) => w !== words[i]);
  const host = family === "ipv4" ? formatIPv4(masked) : formatIPv6(masked);
  return ok({ family, cidr: `${host}/${prefix}`, prefix, hostBitsSet });
}

// Addresses are handled as 16-bit words: 2 for IPv4, 8 for IPv6.
function ipv4Words(addr: string): number[] {
  const [a = 0, b = 0, c = 0, d = 0] = addr.split(".").map(Number);
  return [(a << 8) | b, (c << 8) | d];
}

function ipv6Words(addr: string): number[] {
  let text = addr.toLowerCase();
  const lastColon = text.lastIndexOf(":");
  const tail = text.slice(lastColon + 1);
  if (tail.includes(".")) {
    const [hi = 0, lo = 0] = ipv4Words(tail);
    text = `${text.slice(0, lastColon + 1)}${hi.toString(16)}:${lo.toString(16)}`;
  }
  const [head = "", rest] = text.split("::");
  const parse = (part: string): number[] =>
    part === "" ? [] : part.split(":").map((h) => parseInt(h, 16));
  const left = parse(head);
  if (rest === undefined) return left;
  const right = parse(rest);
  return [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right];
}

function maskWords(words: readonly number[], prefix: number): number[] {
  return words.map((w, i) => {
    const keep = Math.min(16, Math.max(0, prefix - i * 16));
    return w & ((0xffff << (16 - keep)) & 0xffff);
  });
}

function formatIPv4(words: readonly number[]): string {
  return words.flatMap((w) => [w >> 8, w & 0xff]).join(".");
}

function formatIPv6(words: readonly number[]): string {
  // RFC 5952: compress the longest run of two or more zero words, the first one on a tie.
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < words.length;) {
    let j = i;
    while (j < words.length && words[j] === 0) j++;
    if (j - i > bestLength) [bestStart, bestLength] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const hex = words.map((w) => w.toString(16));
  if (bestStart === -1) return hex.join(":");
  const left = hex.slice(0, bestStart).join(":");
  const right = hex.slice(bestStart + bestLength).join(":");
  return `${left}::${right}`;
}

function checkTarget(value: unknown): Checked<Cidr> {
  if (typeof value !== "string") {
    return fail(`must be an IPv4 or IPv6 address as a string, got ${describeValue(value)}`);
  }
  const parsed = parseCidr(value);
  if (!parsed.ok) return parsed;
  const min = MIN_PREFIX[parsed.value.family];
  if (parsed.value.prefix < min) {
    return fail(
      `${describeValue(value)} covers too much: ${FAMILY_NAME[parsed.value.family]} targets ` +
        `need a prefix of /${min} or longer; a guard over that much traffic is almost ` +
        `certainly a typo`,
    );
  }
  return parsed;
}

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
  readonly loopback: boolean;
}

export function checkListen(value: unknown): Checked<ListenAddress> {
  const usage =
    `must be "host:port" with an IP address or localhost, IPv6 in brackets ` +
    `(127.0.0.1:9877, [::1]:9877), got ${describeValue(value)}`;
  if (typeof value !== "string") return fail(usage);
  const match = /^\[([^\]]*)\]:([^:]*)$/.exec(value) ?? /^([^:[\]]*):([^:]*)$/.exec(value);
  const rawHost = match?.[1];
  const portText = match?.[2];
  if (rawHost === undefined || portText === undefined) return fail(usage);
  const bracketed = value.startsWith("[");
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : 0;
  if (port < 1 || port > 65535) {
    return fail(`port must be a number from 1 to 65535, got ${describeValue(portText)}`);
  }
  if (!bracketed && rawHost.toLowerCase() === "localhost") {
    // Bound as 127.0.0.1: what "localhost" resolves to depends on /etc/hosts, and the HTTP
    // adapter only trusts loopback literals.
    return ok({ host: "127.0.0.1", port, loopback: true });
  }
  if (!bracketed && isIPv4(rawHost)) {
    return ok({ host: rawHost, port, loopback: rawHost.startsWith("127.") });
  }
  if (bracketed && isIPv6(rawHost) && !rawHost.includes("%")) {
    const words = ipv6Words(rawHost);
    const mapped = words.slice(0, 5).every((w) => w === 0) && words[5] === 0xffff;
    const loopback =
      words.every((w, i) => w === (i === 7 ? 1 : 0)) ||
      // An IPv4-mapped 127.0.0.0/8 address is loopback too.
      (mapped && (words[6] ?? 0) >> 8 === 0x7f);
    return ok({ host: formatIPv6(words), port, loopback });
  }
  return fail(usage);
}

// ---------------------------------------------------------------------------------------------
// The schema. zod checks the structure (strict objects, lists); the checkers above own values.

function checked<T>(check: (value: unknown) => Checked<T>) {
  return z.unknown().transform((value, ctx): T => {
    const result = check(value);
    if (result.ok) return result.value;
    ctx.addIssue({ code: "custom", message: result.message });
    return z.NEVER;
  });
}

function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  const words = values.map((v) => `"${v}"`);
  const last = words.pop() ?? "";
  const list = words.length === 0 ? last : `${words.join(", ")} or ${last}`;
  return z.enum(values, {
    error: (issue) => `must be ${list}, got ${describeValue(issue.input)}`,
  });
}

const bool = z.boolean({
  // YAML 1.2 only knows true/false; yes/no/on/off are strings, which is easy to miss.
  error: (issue) =>
    `must be true or false (yes/no/on/off are strings in YAML 1.2), got ` +
    describeValue(issue.input),
});

function principalList(kind: PrincipalKind) {
  const example = kind === "user" ? "users: [root, 1001]" : "groups: [imds-readers]";
  return z.array(
    checked((v) => checkPrincipal(v, kind)),
    { error: (issue) => `must be a list such as ${example}, got ${describeValue(issue.input)}` },
  );
}

const principals = z.strictObject(
  { users: principalList("user").optional(), groups: principalList("group").optional() },
  {
    error: (issue) =>
      `must be a mapping with users: and/or groups: lists, such as {users: [root]} ` +
      `({} names nobody), got ${describeValue(issue.input)}`,
  },
);

const configSchema = z.strictObject({
  mode: oneOf(["enforce", "audit"]).optional(),
  allow: principals.optional(),
  deny: principals.optional(),
  targets: z
    .array(checked(checkTarget), {
      error: (issue) =>
        `must be a list of addresses such as [169.254.169.254, "fd00:ec2::254"], ` +
        `got ${describeValue(issue.input)}`,
    })
    .min(1, { error: "needs at least one address" })
    .optional(),
  protocols: oneOf(["all", "tcp"]).optional(),
  backend: oneOf(["auto", "nft", "legacy"]).optional(),
  drift_check_interval: checked((v) => checkDuration(v, 100, 3_600_000)).optional(),
  nss_refresh_interval: checked((v) => checkDuration(v, 1000, 86_400_000)).optional(),
  listen: checked(checkListen).optional(),
  listen_non_loopback: bool.optional(),
  log_denied: bool.optional(),
});

type ParsedFile = z.infer<typeof configSchema>;

// Known keys per level, for "did you mean" hints.
const KNOWN_KEYS: Readonly<Record<string, readonly string[]>> = {
  "": Object.keys(configSchema.shape),
  allow: Object.keys(principals.shape),
  deny: Object.keys(principals.shape),
};

// ---------------------------------------------------------------------------------------------
// Positions.

type Path = readonly (string | number)[];

interface Located {
  readonly path: Path;
  readonly message: string;
  /** Point at the key itself (unknown or duplicated keys) rather than at its value. */
  readonly atKey?: boolean;
}

function nodeStart(node: unknown): number | undefined {
  if (node === null || typeof node !== "object" || !("range" in node)) return undefined;
  const range = node.range as readonly number[] | null | undefined;
  const start = range?.[0];
  const end = range?.[1];
  // `key:` with nothing after it yields an empty null scalar placed at the next line.
  if (start === undefined || (isScalar(node) && node.value === null && start === end)) {
    return undefined;
  }
  return start;
}

/**
 * Offset of the node at `path`: its value, or its key when asked or when the value is empty;
 * the nearest existing ancestor when the path does not exist (a missing key).
 */
function locate(doc: Document, path: Path, atKey: boolean): number {
  let node: unknown = doc.contents;
  let offset = nodeStart(node) ?? 0;
  for (const [i, segment] of path.entries()) {
    if (isAlias(node)) node = node.resolve(doc);
    let keyNode: unknown;
    let valueNode: unknown;
    if (isMap(node)) {
      const pair = node.items.find(
        (p) => isScalar(p.key) && String(p.key.value) === String(segment),
      );
      if (pair === undefined) return offset;
      keyNode = pair.key;
      valueNode = pair.value;
    } else if (isSeq(node) && typeof segment === "number") {
      valueNode = node.items[segment];
      if (valueNode === undefined) return offset;
    } else {
      return offset;
    }
    const last = i === path.length - 1;
    const keyStart = nodeStart(keyNode);
    const valueStart = nodeStart(valueNode);
    if (last && atKey && keyStart !== undefined) return keyStart;
    if (valueStart === undefined) return keyStart ?? offset;
    offset = valueStart;
    node = valueNode;
  }
  return offset;
}

// ---------------------------------------------------------------------------------------------
// Unknown keys.

// Edit distance where swapping two neighbouring letters counts as one edit ("mdoe" -> "mode").
function editDistance(a: string, b: string): number {
  const rows: number[][] = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  const at = (i: number, j: number): number => rows[i]?.[j] ?? Number.POSITIVE_INFINITY;
  for (let i = 1; i <= a.length; i++) {
    const row = rows[i] ?? [];
    for (let j = 1; j <= b.length; j++) {
      const same = a[i - 1] === b[j - 1];
      let best = Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + (same ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        best = Math.min(best, at(i - 2, j - 2) + 1);
      }
      row[j] = best;
    }
  }
  return at(a.length, b.length);
}

function unknownKeyMessage(key: string, known: readonly string[]): string {
  const fold = (s: string) => s.toLowerCase().replaceAll("-", "_");
  // Short keys get less slack, or every four-letter word would "mean" mode.
  const slack = Math.min(2, Math.max(1, Math.floor(key.length / 3)));
  let best: string | undefined;
  let bestDistance = slack + 1;
  for (const candidate of known) {
    const distance = editDistance(fold(key), fold(candidate));
    if (distance < bestDistance) [best, bestDistance] = [candidate, distance];
  }
  return best === undefined
    ? `unknown key; expected one of ${known.join(", ")}`
    : `unknown key; did you mean "${best}"?`;
}

// ---------------------------------------------------------------------------------------------
// Checks that span fields. They run on the raw values so they are reported alongside field
// problems instead of only once everything else is fixed.

function crossFieldProblems(raw: Record<string, unknown>): Located[] {
  const problems: Located[] = [];
  const hasAllow = Object.hasOwn(raw, "allow");
  const hasDeny = Object.hasOwn(raw, "deny");
  if (hasAllow && hasDeny) {
    // Both keys are in the file; blame the later one, which is the likelier addition.
    const keys = Object.keys(raw);
    const second = keys.indexOf("deny") > keys.indexOf("allow") ? "deny" : "allow";
    problems.push({
      path: [second],
      atKey: true,
      message:
        "give either allow: (only these may reach the metadata service) or deny: " +
        "(these are refused, everyone else passes), not both",
    });
  } else if (!hasAllow && !hasDeny) {
    problems.push({
      path: [],
      message:
        "missing allow: or deny:; give allow: (only these may reach the metadata service) " +
        "or deny: (these are refused, everyone else passes)",
    });
  }
  const listen = checkListen(raw.listen ?? DEFAULT_LISTEN);
  if (listen.ok && !listen.value.loopback && raw.listen_non_loopback !== true) {
    problems.push({
      path: ["listen"],
      message:
        "refusing to listen on a non-loopback address; set listen_non_loopback: true " +
        "if you really mean it",
    });
  }
  return problems;
}

function schemaProblems(issues: readonly z.core.$ZodIssue[]): Located[] {
  return issues.flatMap((issue): Located[] => {
    const path = issue.path.filter((p) => typeof p !== "symbol");
    if (issue.code === "unrecognized_keys") {
      const known = KNOWN_KEYS[path.join(".")] ?? [];
      return issue.keys.map((key) => ({
        path: [...path, key],
        atKey: true,
        message: unknownKeyMessage(key, known),
      }));
    }
    return [{ path, message: issue.message }];
  });
}

// ---------------------------------------------------------------------------------------------
// Building the Config and its warnings.

interface Warning {
  readonly path: Path;
  readonly atKey?: boolean;
  readonly message: string;
}

function unique<T>(values: readonly T[]): T[] {
  return [...new Set(values)];
}

function buildConfig(data: ParsedFile): { config: Config; warnings: Warning[] } {
  const warnings: Warning[] = [];
  const policy = data.allow !== undefined ? "allow" : "deny";
  const spec = data.allow ?? data.deny ?? {};
  const users = unique(spec.users ?? []);
  const groups = unique(spec.groups ?? []);
  const mode: Mode = data.mode ?? "enforce";

  const targets: Record<Family, string[]> = { ipv4: [], ipv6: [] };
  const written =
    data.targets ??
    DEFAULT_TARGETS.flatMap((t) => {
      const parsed = parseCidr(t);
      return parsed.ok ? [parsed.value] : [];
    });
  for (const [i, target] of written.entries()) {
    if (target.hostBitsSet && data.targets !== undefined) {
      warnings.push({
        path: ["targets", i],
        message: `address has bits set beyond its prefix; using ${target.cidr}`,
      });
    }
    const list = targets[target.family];
    if (!list.includes(target.cidr)) list.push(target.cidr);
  }

  // Root processes (cloud-init, platform agents) run with uid 0 and gid 0, so either counts.
  const namesRoot = [...users, ...groups].some((p) => p === "root" || p === "0");
  const namesNobody = users.length === 0 && groups.length === 0;
  if (policy === "allow" && namesNobody && mode === "enforce") {
    warnings.push({
      path: ["allow"],
      atKey: true,
      message:
        "ALLOW-LIST NAMES NOBODY: every process, including cloud-init and platform agents " +
        "running as root, will be refused the metadata service",
    });
  } else if (policy === "allow" && !namesRoot) {
    warnings.push({
      path: ["allow"],
      atKey: true,
      message:
        'allow-list does not name root (user "root" or 0): cloud-init and platform agents ' +
        "running as root may lose metadata access",
    });
  } else if (policy === "deny" && namesRoot) {
    warnings.push({
      path: ["deny"],
      atKey: true,
      message:
        "deny-list names root: cloud-init and platform agents running as root will be refused " +
        "the metadata service",
    });
  } else if (policy === "deny" && namesNobody) {
    warnings.push({
      path: ["deny"],
      atKey: true,
      message: "deny-list names nobody: every process can reach the metadata service",
    });
  }
  if (mode === "audit") {
    warnings.push({
      path: ["mode"],
      message:
        "audit mode: nothing is refused; connections the policy would refuse are only " +
        "logged and counted",
    });
  }

  const listen = data.listen ?? { host: "127.0.0.1", port: 9877 };
  const config: Config = {
    mode,
    policy,
    principals: { users, groups },
    targets,
    protocols: data.protocols ?? ("all" satisfies Protocols),
    backend: data.backend ?? ("auto" satisfies BackendChoice),
    driftCheckIntervalMs: data.drift_check_interval ?? 2000,
    nssRefreshIntervalMs: data.nss_refresh_interval ?? 60_000,
    listen: { host: listen.host, port: listen.port },
    listenNonLoopback: data.listen_non_loopback ?? false,
    logDenied: data.log_denied ?? true,
  };
  return { config, warnings };
}

// ---------------------------------------------------------------------------------------------

export function parseConfig(text: string, file: string): ConfigResult {
  const lineCounter = new LineCounter();
  // Pinned to YAML 1.2 core even if the file says %YAML 1.1, so yes/no/on/off stay strings.
  const doc = parseDocument(text, {
    lineCounter,
    prettyErrors: false,
    version: "1.2",
    schema: "core",
    uniqueKeys: true,
    // No YAML 1.1 extras (!!set, !!binary, !!timestamp): they would turn into a Set, bytes or
    // a Date, which are not what any key expects. An unknown tag is reported below instead.
    resolveKnownTags: false,
  });
  const at = (offset: number, path: Path, message: string): ConfigProblem => {
    const { line, col } = lineCounter.linePos(offset);
    return { file, line, col, path: path.join("."), message };
  };
  const place = (p: Located): ConfigProblem =>
    at(locate(doc, p.path, p.atKey ?? false), p.path, p.message);

  // Syntax first: when the text is not well-formed YAML, the tree is a guess.
  const syntax = [...doc.errors, ...doc.warnings].map((e) =>
    at(e.pos[0], [], `YAML: ${e.message}`),
  );
  visit(doc, {
    Alias(_, alias) {
      if (alias.resolve(doc) === undefined) {
        syntax.push(at(alias.range?.[0] ?? 0, [], `YAML: unknown alias *${alias.source}`));
      }
    },
  });
  if (syntax.length > 0) return { ok: false, problems: sortProblems(syntax) };

  if (doc.contents === null) {
    return {
      ok: false,
      problems: [at(0, [], "the file is empty; it needs at least allow: or deny:")],
    };
  }
  if (!isMap(doc.contents)) {
    return {
      ok: false,
      problems: [
        at(
          nodeStart(doc.contents) ?? 0,
          [],
          "the top level must be a mapping of keys such as mode:, allow: and targets:",
        ),
      ],
    };
  }

  let raw: Record<string, unknown>;
  try {
    raw = doc.toJS({ maxAliasCount: 100 }) as Record<string, unknown>;
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    return { ok: false, problems: [at(0, [], `YAML: ${message}`)] };
  }

  const parsed = configSchema.safeParse(raw);
  const located = [
    ...(parsed.success ? [] : schemaProblems(parsed.error.issues)),
    ...crossFieldProblems(raw),
  ];
  if (!parsed.success || located.length > 0) {
    return { ok: false, problems: sortProblems(located.map(place)) };
  }
  const { config, warnings } = buildConfig(parsed.data);
  return { ok: true, config, warnings: sortProblems(warnings.map(place)).map(formatProblem) };
}

function sortProblems(problems: ConfigProblem[]): ConfigProblem[] {
  return problems.sort((a, b) => a.line - b.line || a.col - b.col);
}
