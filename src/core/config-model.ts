// The validated, normalised shape of /etc/imds-guard/config.yaml that the rest of the core
// consumes. Produced only by parseConfig (config.ts); every field here has already been
// checked, so no later stage re-validates or guesses defaults.

export type Mode = "enforce" | "audit";
export type Policy = "allow" | "deny";
export type Protocols = "all" | "tcp";
export type BackendChoice = "auto" | "nft" | "legacy";
export type Family = "ipv4" | "ipv6";

export const FAMILIES: readonly Family[] = ["ipv4", "ipv6"];

/** Users and groups as written: names, or decimal ids kept as strings ("1001"). */
export interface PrincipalSpec {
  readonly users: readonly string[];
  readonly groups: readonly string[];
}

export interface Config {
  readonly mode: Mode;
  /** Which of `allow:` / `deny:` was given (exactly one is). */
  readonly policy: Policy;
  readonly principals: PrincipalSpec;
  /** Normalised CIDRs, host bits cleared, always with a prefix: "169.254.169.254/32". */
  readonly targets: Readonly<Record<Family, readonly string[]>>;
  readonly protocols: Protocols;
  readonly backend: BackendChoice;
  readonly driftCheckIntervalMs: number;
  /** How often NSS is asked again, for LDAP/SSSD membership changes that no file shows. */
  readonly nssRefreshIntervalMs: number;
  readonly listen: { readonly host: string; readonly port: number };
  readonly listenNonLoopback: boolean;
  readonly logDenied: boolean;
}

export const DEFAULT_CONFIG_PATH = "/etc/imds-guard/config.yaml";
