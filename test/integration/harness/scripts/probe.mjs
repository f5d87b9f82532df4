// Client probe, run by the harness inside the "instance" namespace under setpriv as the uid/gid
// being tested. Plain JavaScript with node: imports only, so an unprivileged uid can run it
// without tsx. It only ever talks to the host it is given; which namespace that reaches is
// decided by how it is started, never by this script.
//
// usage: node probe.mjs once|hold|loop --host H --port P [--protocol tcp|udp] [--timeout MS]
//                       [--interval MS]
//   once  one attempt, prints one JSON outcome line.
//   hold  one keep-alive TCP connection; prints the outcome of a first GET, then one more
//         outcome per "get" line on stdin, always on the same socket. Exits when stdin ends.
//   loop  a fresh attempt every --interval ms; prints {"started":true} after the first one and
//         {"counts":{...}} after a "stop" line (or end of stdin).
// HTTP is spoken by hand on a raw socket so "hold" can guarantee no silent reconnect.
import { Buffer } from "node:buffer";
import { createSocket } from "node:dgram";
import { connect, isIPv6 } from "node:net";
import { performance } from "node:perf_hooks";
import process from "node:process";
import { randomBytes } from "node:crypto";
import { createInterface } from "node:readline";
import { clearTimeout, setTimeout } from "node:timers";
import { parseArgs } from "node:util";

/**
 * @typedef {"200" | "refused" | "timeout" | "error"} Result
 * @typedef {{ result: Result, detail?: string, servedBy?: string }} Outcome
 * @typedef {Outcome & { ms: number }} TimedOutcome
 */

const REQUEST_PATH = "/latest/meta-data/instance-id";
/** How long a UDP send that failed locally waits for the ICMP error that a REJECT also sends. */
const ICMP_GRACE_MS = 100;

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    host: { type: "string" },
    port: { type: "string" },
    protocol: { type: "string", default: "tcp" },
    timeout: { type: "string", default: "1000" },
    interval: { type: "string", default: "20" },
  },
});

const mode = positionals[0] ?? "once";
const host = values.host ?? "169.254.169.254";
const protocol = values.protocol === "udp" ? "udp" : "tcp";
const port = Number(values.port ?? (protocol === "udp" ? "53" : "80"));
const timeoutMs = Number(values.timeout);
const intervalMs = Number(values.interval);
const hostHeader = isIPv6(host) ? `[${host}]` : host;

/** @param {unknown} value */
function emit(value) {
  process.stdout.write(JSON.stringify(value) + "\n");
}

/**
 * ECONNREFUSED is what a SYN answered by RST or ICMP port-unreachable looks like; ECONNRESET
 * is what an established connection sees after `REJECT --reject-with tcp-reset`.
 * @param {Error & { code?: string }} err
 * @returns {Outcome}
 */
function classify(err) {
  const code = err.code ?? err.message;
  if (code === "ECONNREFUSED" || code === "ECONNRESET") return { result: "refused", detail: code };
  return { result: "error", detail: code };
}

/**
 * @param {Promise<Outcome>} outcome
 * @returns {Promise<TimedOutcome>}
 */
async function timed(outcome) {
  const start = performance.now();
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  /** @type {Promise<Outcome>} */
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => {
      resolve({ result: "timeout", detail: `no answer within ${timeoutMs} ms` });
    }, timeoutMs);
  });
  const settled = await Promise.race([outcome, timeout]);
  clearTimeout(timer);
  return { ...settled, ms: Math.round((performance.now() - start) * 100) / 100 };
}

/** One TCP connection speaking HTTP/1.1 keep-alive; requests are answered strictly in order. */
class HttpConnection {
  constructor() {
    this.buffer = Buffer.alloc(0);
    /** @type {((o: Outcome) => void)[]} waiters, oldest first; a timed-out one stays queued */
    this.queue = [];
    /** @type {(Error & { code?: string }) | undefined} */
    this.failure = undefined;
    this.socket = connect({ host, port });
    this.socket.setNoDelay(true);
    this.socket.on("data", (chunk) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.drain();
    });
    this.socket.on("error", (err) => {
      this.failure = err;
      this.failAll();
    });
    this.socket.on("close", () => {
      this.failAll();
    });
  }

  /** @returns {Outcome} */
  deadOutcome() {
    return this.failure === undefined
      ? { result: "error", detail: "connection closed by peer" }
      : classify(this.failure);
  }

  failAll() {
    const outcome = this.deadOutcome();
    for (const settle of this.queue.splice(0)) settle(outcome);
  }

  drain() {
    for (;;) {
      const headEnd = this.buffer.indexOf("\r\n\r\n");
      if (headEnd < 0) return;
      const head = this.buffer.subarray(0, headEnd).toString("latin1");
      const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? "0");
      if (this.buffer.length < headEnd + 4 + length) return;
      this.buffer = this.buffer.subarray(headEnd + 4 + length);
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1];
      const servedBy = /\r\nx-served-by:\s*([^\r]+)/i.exec(head)?.[1];
      /** @type {Outcome} */
      const outcome =
        status === "200"
          ? { result: "200" }
          : { result: "error", detail: `HTTP status ${status ?? "unparseable"}` };
      if (servedBy !== undefined) outcome.servedBy = servedBy;
      this.queue.shift()?.(outcome);
    }
  }

  /** @returns {Promise<Outcome>} */
  get() {
    if (this.socket.destroyed || this.socket.writableEnded) {
      const dead = this.deadOutcome();
      return Promise.resolve({ ...dead, detail: `socket already closed: ${dead.detail ?? ""}` });
    }
    return new Promise((resolve) => {
      this.queue.push(resolve);
      this.socket.write(
        `GET ${REQUEST_PATH} HTTP/1.1\r\nHost: ${hostHeader}\r\nConnection: keep-alive\r\n\r\n`,
      );
    });
  }

  close() {
    this.socket.destroy();
  }
}

/** @returns {Promise<Outcome>} */
function udpEcho() {
  return new Promise((resolve) => {
    const socket = createSocket(isIPv6(host) ? "udp6" : "udp4");
    const nonce = randomBytes(8).toString("hex");
    let done = false;
    /** @type {string | undefined} */
    let sendFailure;
    /** @param {Outcome} outcome */
    const finish = (outcome) => {
      if (done) return;
      done = true;
      clearTimeout(giveUp);
      try {
        socket.close();
      } catch {
        // already closed after an error; nothing left to release
      }
      resolve(outcome);
    };
    // The outer timed() reports the timeout; this only releases the socket afterwards.
    const giveUp = setTimeout(() => {
      finish({ result: "timeout" });
    }, timeoutMs + 100);
    socket.on("error", (err) => {
      const outcome = classify(err);
      finish(
        sendFailure === undefined
          ? outcome
          : { ...outcome, detail: `${outcome.detail ?? ""} (send: ${sendFailure})` },
      );
    });
    socket.on("message", (msg) => {
      if (msg.toString() === nonce) finish({ result: "200" });
    });
    // A connected socket is what turns an ICMP port-unreachable into ECONNREFUSED.
    socket.connect(port, host, () => {
      socket.send(nonce, (err) => {
        if (!err) return;
        // A REJECT in the sender's own OUTPUT chain fails the send with EPERM *and* queues an
        // ICMP port-unreachable that surfaces as ECONNREFUSED a moment later; a DROP only gives
        // EPERM. Wait briefly so the two are told apart.
        const failed = classify(err);
        sendFailure = failed.detail;
        if (failed.detail !== "EPERM") finish(failed);
        else
          setTimeout(() => {
            finish(failed);
          }, ICMP_GRACE_MS);
      });
    });
  });
}

/** @returns {Promise<TimedOutcome>} */
async function attemptOnce() {
  if (protocol === "udp") return timed(udpEcho());
  const connection = new HttpConnection();
  try {
    return await timed(connection.get());
  } finally {
    connection.close();
  }
}

async function runHold() {
  const connection = new HttpConnection();
  emit(await timed(connection.get()));
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line.trim() === "get") emit(await timed(connection.get()));
  }
  connection.close();
}

async function runLoop() {
  /** @type {Record<Result, number>} */
  const counts = { 200: 0, refused: 0, timeout: 0, error: 0 };
  /** @type {string[]} the first few non-200 details, to explain a failing assertion */
  const details = [];
  const control = { stopping: false };
  const lines = createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    if (line.trim() === "stop") control.stopping = true;
  });
  lines.on("close", () => {
    control.stopping = true;
  });
  let started = false;
  while (!control.stopping) {
    const start = performance.now();
    const outcome = await attemptOnce();
    counts[outcome.result] += 1;
    if (outcome.result !== "200" && details.length < 10) {
      details.push(`${outcome.result}: ${outcome.detail ?? ""}`);
    }
    if (!started) {
      started = true;
      emit({ started: true });
    }
    const wait = intervalMs - (performance.now() - start);
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  }
  lines.close();
  emit({ counts, details });
}

if (mode === "once") emit(await attemptOnce());
else if (mode === "hold") await runHold();
else if (mode === "loop") await runLoop();
else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exitCode = 2;
}
process.exit();
