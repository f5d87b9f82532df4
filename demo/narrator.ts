// Owns the demo's output: plain lines on stdout, and the tally of outcomes the demo counts on.
// It never invents a result: every checked line is printed together with what really happened,
// and a line that did not go as expected says so next to it.

import type { ConnectOutcome, Family, ProbeUser } from "../test/integration/harness/index.js";

export class Narrator {
  readonly #write: (line: string) => void;
  readonly #unexpected: string[] = [];
  #checked = 0;
  #silenced = false;

  constructor(write: (line: string) => void = (line) => process.stdout.write(`${line}\n`)) {
    this.#write = write;
  }

  /** A line of the story; dropped once an interrupt has taken over the output. */
  line(text = ""): void {
    if (!this.#silenced) this.#write(text);
  }

  section(number: number, title: string): void {
    this.line();
    this.line(`── ${String(number)}. ${title}`);
  }

  /** Counts an outcome the demo relies on; `problem` is printed only when it did not happen. */
  check(ok: boolean, text: string, problem: string): boolean {
    this.#checked += 1;
    this.line(text);
    if (!ok) {
      this.#unexpected.push(problem);
      this.line(`   !! UNEXPECTED: ${problem}`);
    }
    return ok;
  }

  /** Records a failure that has no line of its own (an exception that ended the story). */
  fail(problem: string): void {
    this.#unexpected.push(problem);
    this.line(`!! UNEXPECTED: ${problem}`);
  }

  /** After SIGINT/SIGTERM the interrupted story must not talk over the clean-up. */
  silence(): void {
    this.#silenced = true;
  }

  /** Clean-up and the verdict are printed even after an interrupt. */
  always(text = ""): void {
    this.#write(text);
  }

  get checked(): number {
    return this.#checked;
  }

  get unexpected(): readonly string[] {
    return this.#unexpected;
  }
}

export function formatMs(ms: number): string {
  return ms < 10 ? ms.toFixed(1) : String(Math.round(ms));
}

export function endpoint(address: string, family: Family, port = 80): string {
  return family === "ipv6" ? `[${address}]:${String(port)}` : `${address}:${String(port)}`;
}

export function who(label: string, user: ProbeUser): string {
  if (user.groups === undefined || user.groups.length === 0) {
    return `${label} (uid ${String(user.uid)}, gid ${String(user.gid)}, no supplementary groups)`;
  }
  return `${label} (uid ${String(user.uid)})`;
}

export function outcomeText(outcome: ConnectOutcome): string {
  switch (outcome.result) {
    case "200":
      return `200 in ${formatMs(outcome.ms)} ms`;
    case "refused":
      return `refused in ${formatMs(outcome.ms)} ms`;
    case "timeout":
      return `no answer within ${formatMs(outcome.ms)} ms`;
    case "error":
      return `error after ${formatMs(outcome.ms)} ms: ${outcome.detail ?? "unknown"}`;
  }
}

export function connectionLine(
  label: string,
  user: ProbeUser,
  target: string,
  outcome: ConnectOutcome,
): string {
  const mark = outcome.result === "200" ? "✔" : "✘";
  return `  ${mark} ${who(label, user)} → ${target}: ${outcomeText(outcome)}`;
}
