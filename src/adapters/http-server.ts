// Owns the local HTTP surface: /healthz, /readyz, /status and /metrics, read-only, GET and HEAD.
// Must never change daemon state, never log per request (scrapes would flood the journal), and
// never listen beyond loopback unless the operator explicitly allowed it.

import { isIP } from "node:net";

import Fastify, { type FastifyInstance, type FastifyReply } from "fastify";
import type { Logger } from "pino";

import { ImdsGuardError } from "../core/errors.js";

export interface Check {
  ok: boolean;
  reason?: string;
}

export interface HttpHandlers {
  healthz(): Check;
  readyz(): Check;
  status(): unknown;
  metrics(): Promise<{ contentType: string; body: string }>;
}

export interface HttpServerOptions {
  logger: Logger;
  handlers: HttpHandlers;
}

const ALLOW = "GET, HEAD";
const TIMEOUT_MS = 5_000;

export function createHttpServer(opts: HttpServerOptions): FastifyInstance {
  const { handlers } = opts;
  const log = opts.logger.child({ component: "http" });
  const app = Fastify({
    // Fastify's own request logging stays off; errors are logged below through our logger.
    logger: false,
    // Nothing here takes a body or parameters; keep what a client can make us buffer tiny.
    bodyLimit: 1024,
    routerOptions: { maxParamLength: 64 },
    http: { maxHeaderSize: 8192 },
    connectionTimeout: TIMEOUT_MS,
    requestTimeout: TIMEOUT_MS,
    keepAliveTimeout: TIMEOUT_MS,
    // Closing on shutdown must not wait for a scraper's idle keep-alive connection.
    forceCloseConnections: "idle",
    requestIdHeader: false,
  });

  const check = (reply: FastifyReply, result: Check): FastifyReply => {
    reply.header("content-type", "text/plain; charset=utf-8").header("cache-control", "no-store");
    if (result.ok) return reply.code(200).send("ok\n");
    return reply.code(503).send(`${oneLine(result.reason ?? "not ok")}\n`);
  };

  const routes: Record<string, (reply: FastifyReply) => Promise<FastifyReply> | FastifyReply> = {
    "/healthz": (reply) => check(reply, handlers.healthz()),
    "/readyz": (reply) => check(reply, handlers.readyz()),
    "/status": (reply) =>
      reply
        .header("cache-control", "no-store")
        .type("application/json; charset=utf-8")
        .send(handlers.status()),
    "/metrics": async (reply) => {
      const { contentType, body } = await handlers.metrics();
      return reply.header("cache-control", "no-store").type(contentType).send(body);
    },
  };

  const otherMethods = app.supportedMethods.filter((m) => m !== "GET" && m !== "HEAD");
  for (const [url, handler] of Object.entries(routes)) {
    // exposeHeadRoutes (on by default) answers HEAD from the GET route without a body.
    app.get(url, (_request, reply) => handler(reply));
    // Fastify answers an unrouted method with 404; a known path deserves 405 and an Allow header.
    // Answering in onRequest, before body parsing, keeps it 405 whatever body or content type came.
    app.route({
      method: otherMethods,
      url,
      onRequest: (_request, reply, done) => {
        methodNotAllowed(reply);
        done();
      },
      handler: (_request, reply) => methodNotAllowed(reply),
    });
  }

  app.setNotFoundHandler((_request, reply) =>
    reply.code(404).type("text/plain; charset=utf-8").send("not found\n"),
  );

  app.setErrorHandler((error: unknown, request, reply) => {
    const statusCode = (error as { statusCode?: unknown }).statusCode;
    // Client errors (oversized body, bad content type) are the client's problem; say so briefly.
    if (typeof statusCode === "number" && statusCode >= 400 && statusCode < 500) {
      return reply
        .code(statusCode)
        .type("text/plain; charset=utf-8")
        .send(`${oneLine(errorMessage(error))}\n`);
    }
    log.error({ err: error, method: request.method, url: request.url }, "http handler failed");
    // The message may carry internals (paths, stderr); the journal has it, the client does not.
    return reply.code(500).type("text/plain; charset=utf-8").send("internal error\n");
  });

  return app;
}

export interface ListenOptions {
  host: string;
  port: number;
  /** Required for any address outside loopback, including the wildcards 0.0.0.0 and ::. */
  allowNonLoopback?: boolean;
}

/** Listens and returns the bound address (for port 0, the port the kernel picked). */
export async function listenOn(app: FastifyInstance, opts: ListenOptions): Promise<string> {
  if (opts.allowNonLoopback !== true && !isLoopbackLiteral(opts.host)) {
    throw new ImdsGuardError(
      "IMDSG_LISTEN_REFUSED",
      `refusing to listen on ${opts.host}: /status and /metrics describe who may reach the metadata service; ` +
        "use a loopback address or set allowNonLoopback",
      { host: opts.host, port: opts.port },
    );
  }
  return app.listen({ host: opts.host, port: opts.port });
}

// Only IP literals count: a host name could resolve to anything, now or after an /etc/hosts edit.
export function isLoopbackLiteral(host: string): boolean {
  const family = isIP(host);
  if (family === 4) return host.split(".")[0] === "127";
  if (family === 6) {
    const lower = host.toLowerCase();
    if (lower === "::1" || /^(0{1,4}:){7}0{0,3}1$/.test(lower)) return true;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(lower);
    return mapped?.[1] !== undefined && isLoopbackLiteral(mapped[1]);
  }
  return false;
}

function methodNotAllowed(reply: FastifyReply): FastifyReply {
  return reply
    .code(405)
    .header("allow", ALLOW)
    .type("text/plain; charset=utf-8")
    .send("method not allowed\n");
}

function oneLine(text: string): string {
  return text.replace(/[\r\n]+/g, " ");
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
