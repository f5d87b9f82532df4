// One catalogue of stable error codes (fastify's lib/errors.js style). Each error keeps the
// context an operator needs to act: the file and line, or the exact restore input and stderr.

export type ErrorCode =
  | "IMDSG_CONFIG_UNREADABLE"
  | "IMDSG_CONFIG_INSECURE"
  | "IMDSG_NSS_LOOKUP"
  | "IMDSG_IPTABLES_SAVE"
  | "IMDSG_IPTABLES_RESTORE"
  | "IMDSG_IPTABLES_LOCK"
  | "IMDSG_IPTABLES_FIGHT"
  | "IMDSG_LISTEN_REFUSED";

export class ImdsGuardError extends Error {
  readonly code: ErrorCode;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(message);
    this.name = "ImdsGuardError";
    this.code = code;
    this.details = details;
  }
}

export function isImdsGuardError(value: unknown, code?: ErrorCode): value is ImdsGuardError {
  return value instanceof ImdsGuardError && (code === undefined || value.code === code);
}
