// A read-only look at the host namespace's firewall, so the demo can show it left it alone.
// Only the *-save dump commands run here, in the namespace the demo itself runs in; this module
// must never run anything that writes rules, and nothing in it enters a testbed namespace.

import { execa } from "execa";

export interface HostFirewall {
  /** Per command, the dump without counters and timestamps; undefined when it could not run. */
  readonly dumps: Readonly<Record<string, string | undefined>>;
  /** Lines that belong to imds-guard (its chains or its comment tags). */
  readonly imdsLines: readonly string[];
}

const DUMPS = ["iptables-save", "ip6tables-save"] as const;
const OURS = /IMDS-GUARD|imds-guard|imdsg/;

function normalise(text: string): string {
  return text
    .split("\n")
    .filter((line) => !line.startsWith("#"))
    .map((line) => line.replace(/\[\d+:\d+\]/g, "[0:0]"))
    .join("\n");
}

export async function readHostFirewall(): Promise<HostFirewall> {
  const dumps: Record<string, string | undefined> = {};
  const imdsLines: string[] = [];
  for (const command of DUMPS) {
    const result = await execa(command, [], { reject: false, timeout: 10_000 });
    if (result.exitCode !== 0) {
      dumps[command] = undefined;
      continue;
    }
    const text = normalise(result.stdout);
    dumps[command] = text;
    imdsLines.push(...text.split("\n").filter((line) => OURS.test(line)));
  }
  return { dumps, imdsLines };
}

/** Commands whose dump differs between the two looks (or could not be taken both times). */
export function changedDumps(before: HostFirewall, after: HostFirewall): string[] {
  return DUMPS.filter(
    (command) =>
      before.dumps[command] === undefined ||
      after.dumps[command] === undefined ||
      before.dumps[command] !== after.dumps[command],
  );
}
