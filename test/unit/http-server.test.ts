// The local HTTP surface as a scraper or a probe sees it: status codes, bodies, content types,
// 405 with Allow for the wrong method, 404 elsewhere; once over a real loopback socket; and
// listenOn refusing anything but loopback unless told otherwise.

import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { test } from "node:test";

import { isImdsGuardError } from "../../src/core/errors.js";
import { createLogger } from "../../src/adapters/logger.js";
import {
  createHttpServer,
  isLoopbackLiteral,
  listenOn,
  type Check,
} from "../../src/adapters/http-server.js";

const METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8";

function setup(state: { healthy: Check; ready: Check; metricsFail?: boolean }) {
  const logStream = new PassThrough();
  const logLines: string[] = [];
  logStream.on("data", (chunk: Buffer) => logLines.push(chunk.toString("utf8")));
  const app = createHttpServer({
    logger: createLogger({ stream: logStream, env: {} }),
    handlers: {
      healthz: () => state.healthy,
      readyz: () => state.ready,
      status: () => ({ rules: 3, lastReconcile: "2024-01-01T00:00:00Z" }),
      metrics: () =>
        state.metricsFail === true
          ? Promise.reject(new Error("registry exploded at /secret/path"))
          : Promise.resolve({ contentType: METRICS_TYPE, body: "imds_guard_up 1\n" }),
    },
  });
  return { app, logLines };
}

void test("routes answer 200 when healthy and 503 with the reason when not", async (t) => {
  const state = { healthy: { ok: true } as Check, ready: { ok: true } as Check };
  const { app, logLines } = setup(state);
  t.after(() => app.close());

  const cases: {
    intent: string;
    url: string;
    status: number;
    type: RegExp;
    body: string | RegExp;
  }[] = [
    { intent: "liveness ok", url: "/healthz", status: 200, type: /^text\/plain/, body: "ok\n" },
    { intent: "readiness ok", url: "/readyz", status: 200, type: /^text\/plain/, body: "ok\n" },
    {
      intent: "status is JSON",
      url: "/status",
      status: 200,
      type: /^application\/json/,
      body: /"rules":3/,
    },
    {
      intent: "metrics keep the handler's content type",
      url: "/metrics",
      status: 200,
      type: /version=0\.0\.4/,
      body: "imds_guard_up 1\n",
    },
  ];
  for (const { intent, url, status, type, body } of cases) {
    const res = await app.inject({ method: "GET", url });
    assert.equal(res.statusCode, status, intent);
    assert.match(String(res.headers["content-type"]), type, intent);
    if (typeof body === "string") assert.equal(res.body, body, intent);
    else assert.match(res.body, body, intent);
  }

  state.healthy = { ok: false, reason: "reconcile loop stuck for 120s\nsecond line" };
  state.ready = { ok: false, reason: "rules not installed yet" };
  const health = await app.inject({ method: "GET", url: "/healthz" });
  assert.equal(health.statusCode, 503);
  assert.equal(health.body, "reconcile loop stuck for 120s second line\n");
  const ready = await app.inject({ method: "GET", url: "/readyz" });
  assert.equal(ready.statusCode, 503);
  assert.equal(ready.body, "rules not installed yet\n");

  state.ready = { ok: false };
  assert.equal((await app.inject({ method: "GET", url: "/readyz" })).body, "not ok\n");

  assert.deepEqual(logLines, [], "requests are never logged");
});

void test("HEAD works on every route and has no body", async (t) => {
  const { app } = setup({ healthy: { ok: true }, ready: { ok: false, reason: "starting" } });
  t.after(() => app.close());
  for (const [url, status] of [
    ["/healthz", 200],
    ["/readyz", 503],
    ["/status", 200],
    ["/metrics", 200],
  ] as const) {
    const res = await app.inject({ method: "HEAD", url });
    assert.equal(res.statusCode, status, url);
    assert.equal(res.body, "", url);
  }
});

void test("other methods on a known path are 405 with Allow: GET, HEAD; unknown paths are 404", async (t) => {
  const { app } = setup({ healthy: { ok: true }, ready: { ok: true } });
  t.after(() => app.close());
  for (const url of ["/healthz", "/readyz", "/status", "/metrics"]) {
    for (const method of ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] as const) {
      const res = await app.inject({ method, url, payload: method === "POST" ? "x" : undefined });
      assert.equal(res.statusCode, 405, `${method} ${url}`);
      assert.equal(res.headers.allow, "GET, HEAD", `${method} ${url}`);
    }
  }
  for (const [method, url] of [
    ["GET", "/"],
    ["GET", "/nope"],
    ["POST", "/nope"],
    ["GET", "/metrics/x"],
  ] as const) {
    const res = await app.inject({ method, url });
    assert.equal(res.statusCode, 404, `${method} ${url}`);
    assert.equal(res.body, "not found\n");
  }
});

void test("a failing handler is a bare 500 to the client and a log line for the operator", async (t) => {
  const { app, logLines } = setup({
    healthy: { ok: true },
    ready: { ok: true },
    metricsFail: true,
  });
  t.after(() => app.close());
  const res = await app.inject({ method: "GET", url: "/metrics" });
  assert.equal(res.statusCode, 500);
  assert.equal(res.body, "internal error\n");
  const logged = logLines.join("");
  assert.match(logged, /http handler failed/);
  assert.match(logged, /registry exploded/);
});

void test("a wrong method is 405 whatever body it brings, before the body is parsed", async (t) => {
  const { app } = setup({ healthy: { ok: true }, ready: { ok: true } });
  t.after(() => app.close());
  const res = await app.inject({
    method: "POST",
    url: "/status",
    headers: { "content-type": "application/json" },
    payload: JSON.stringify({ pad: "x".repeat(4096) }),
  });
  assert.equal(res.statusCode, 405);
});

void test("over a real loopback socket on an ephemeral port", async (t) => {
  const { app } = setup({ healthy: { ok: true }, ready: { ok: true } });
  t.after(() => app.close());
  const address = await listenOn(app, { host: "127.0.0.1", port: 0 });
  assert.match(address, /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.notEqual(new URL(address).port, "0");

  const health = await fetch(`${address}/healthz`);
  assert.equal(health.status, 200);
  assert.equal(await health.text(), "ok\n");

  const metrics = await fetch(`${address}/metrics`);
  assert.equal(metrics.headers.get("content-type"), METRICS_TYPE);
  assert.equal(await metrics.text(), "imds_guard_up 1\n");

  const post = await fetch(`${address}/metrics`, { method: "POST", body: "x" });
  assert.equal(post.status, 405);
  assert.equal(post.headers.get("allow"), "GET, HEAD");
  await post.text();
});

void test("listenOn refuses wildcard and non-loopback hosts unless allowed", async (t) => {
  for (const host of [
    "0.0.0.0",
    "::",
    "10.1.2.3",
    "169.254.169.254",
    "localhost",
    "::ffff:10.0.0.1",
  ]) {
    const { app } = setup({ healthy: { ok: true }, ready: { ok: true } });
    t.after(() => app.close());
    await assert.rejects(
      listenOn(app, { host, port: 0 }),
      (error: unknown) => isImdsGuardError(error, "IMDSG_LISTEN_REFUSED"),
      host,
    );
    assert.equal(app.server.listening, false, `${host}: nothing was bound`);
  }

  const { app } = setup({ healthy: { ok: true }, ready: { ok: true } });
  t.after(() => app.close());
  const address = await listenOn(app, { host: "0.0.0.0", port: 0, allowNonLoopback: true });
  assert.match(address, /:\d+$/);
});

void test("isLoopbackLiteral: loopback IP literals only", () => {
  const cases: [string, boolean, string][] = [
    ["127.0.0.1", true, "the usual"],
    ["127.10.20.30", true, "all of 127/8 is loopback"],
    ["::1", true, "IPv6 loopback"],
    ["0:0:0:0:0:0:0:1", true, "IPv6 loopback, long form"],
    ["::ffff:127.0.0.1", true, "IPv4-mapped loopback"],
    ["0.0.0.0", false, "wildcard"],
    ["::", false, "IPv6 wildcard"],
    ["10.1.2.3", false, "private address"],
    ["localhost", false, "names may resolve to anything"],
    ["128.0.0.1", false, "just outside 127/8"],
  ];
  for (const [host, want, intent] of cases)
    assert.equal(isLoopbackLiteral(host), want, `${host}: ${intent}`);
});
