// Names for everything a testbed creates. Each carries "imdsg" and the run's random hex, so a
// leftover is attributable to one run and can never collide with a real account or namespace.

import { randomBytes } from "node:crypto";

/** Debian's useradd/groupadd refuse names longer than this. */
export const MAX_PRINCIPAL_NAME = 32;

const SHORT_NAME = /^[a-z][a-z0-9_-]*$/;

export interface RunNames {
  /** `imdsg-<6 hex>`; also the prefix of the temp dir. */
  readonly prefix: string;
  readonly hex: string;
  readonly instanceNs: string;
  readonly metadataNs: string;
}

export function newRunNames(): RunNames {
  const hex = randomBytes(3).toString("hex");
  const prefix = `imdsg-${hex}`;
  return { prefix, hex, instanceNs: `${prefix}-inst`, metadataNs: `${prefix}-meta` };
}

/** `imdsg<hex>-<shortName>`, truncated to what useradd accepts. */
export function principalName(hex: string, shortName: string): string {
  if (!SHORT_NAME.test(shortName)) {
    throw new Error(`test principal name ${JSON.stringify(shortName)} must match ${SHORT_NAME}`);
  }
  return `imdsg${hex}-${shortName}`.slice(0, MAX_PRINCIPAL_NAME);
}
