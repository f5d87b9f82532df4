// The outside view of an exposure window: run by the benchmark inside the instance namespace
// under setpriv as a uid the policy refuses, it opens TCP connections to the metadata address
// and reports when they started getting through and when they were refused again. Plain
// JavaScript with node: imports only, so an unprivileged uid runs it without tsx. It only ever
// talks to the host it is given; which namespace that reaches is decided by how it is started.
//
// usage: node exposure-watcher.mjs --host H --port P [--interval MS] [--timeout MS] [--max MS]
// Prints {"ready":true}, then for every "watch" line on stdin:
//   {"armed":true}   after one attempt was blocked (the guard is in force), or
//   {"armed":false,"detail":...} when it got through and nothing is measured;
//   then one attempt every --interval ms until one got through and a later one was blocked:
//   {"openedAt":ns,"closedAt":ns,"lastOpenAt":ns,"opens":n,"closedBy":"refused"|"timeout"|...}
//   or {"error":...} after --max ms. Times are process.hrtime.bigint() (CLOCK_MONOTONIC, shared
//   with the benchmark process) as decimal strings; an attempt's time is when it started.
import { connect } from "node:net";
import process from "node:process";
import { createInterface } from "node:readline";
import { clearTimeout, setTimeout } from "node:timers";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    host: { type: "string" },
    port: { type: "string", default: "80" },
    interval: { type: "string", default: "2" },
    timeout: { type: "string", default: "200" },
    max: { type: "string", default: "15000" },
  },
});
const host = values.host ?? "169.254.169.254";
const port = Number(values.port);
const intervalMs = Number(values.interval);
const timeoutMs = Number(values.timeout);
const maxMs = Number(values.max);

/** @param {unknown} value */
function emit(value) {
  process.stdout.write(JSON.stringify(value) + "\n");
}

/** @param {number} ms */
function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * One connect. "open" as soon as the handshake completes (the uid could now send a request);
 * the socket is then reset rather than closed, so thousands of attempts leave no TIME_WAIT.
 * @returns {Promise<{ at: bigint, result: string }>}
 */
function attempt() {
  const at = process.hrtime.bigint();
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    /** @param {string} result */
    const finish = (result) => {
      clearTimeout(timer);
      socket.removeAllListeners();
      socket.on("error", () => undefined);
      if (result === "open") socket.resetAndDestroy();
      else socket.destroy();
      resolve({ at, result });
    };
    const timer = setTimeout(() => {
      finish("timeout");
    }, timeoutMs);
    socket.once("connect", () => {
      finish("open");
    });
    socket.once("error", (/** @type {Error & { code?: string }} */ err) => {
      finish(err.code === "ECONNREFUSED" ? "refused" : `error ${err.code ?? err.message}`);
    });
  });
}

/** Paces attempts --interval ms apart (start to start); never overlaps two. */
async function paced(/** @type {bigint} */ previousStart) {
  const elapsedMs = Number(process.hrtime.bigint() - previousStart) / 1e6;
  if (elapsedMs < intervalMs) await sleep(intervalMs - elapsedMs);
  return attempt();
}

async function watch() {
  const first = await attempt();
  if (first.result === "open") {
    emit({ armed: false, detail: "the first attempt got through: the guard is not in force" });
    return;
  }
  emit({ armed: true });
  const deadline = first.at + BigInt(maxMs) * 1_000_000n;
  /** @type {Record<string, number>} how the attempts of this round ended, for a failure report */
  const seen = {};
  let last = first;
  while (last.result !== "open") {
    seen[last.result] = (seen[last.result] ?? 0) + 1;
    if (last.at > deadline) {
      emit({ error: `nothing got through within ${maxMs} ms: ${JSON.stringify(seen)}` });
      return;
    }
    last = await paced(last.at);
  }
  const opened = last;
  let lastOpen = last;
  let opens = 1;
  for (;;) {
    if (last.at > deadline) {
      emit({ error: `still getting through after ${maxMs} ms` });
      return;
    }
    last = await paced(last.at);
    if (last.result !== "open") break;
    lastOpen = last;
    opens += 1;
  }
  emit({
    openedAt: String(opened.at),
    closedAt: String(last.at),
    lastOpenAt: String(lastOpen.at),
    opens,
    closedBy: last.result,
  });
}

const lines = createInterface({ input: process.stdin });
emit({ ready: true });
for await (const line of lines) {
  if (line.trim() === "watch") await watch();
}
process.exit();
