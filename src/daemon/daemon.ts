// The long-running guard: wires triggers (timers, file watches, the kernel monitor, signals)
// into one scheduler, serves health and metrics, and talks to systemd. Stopping the daemon
// never removes rules: they stay in force until `imds-guard uninstall`.

import { resolve } from "node:path";
import type { Logger } from "pino";
import { Registry } from "prom-client";
import type { Config } from "../core/config-model.js";
import type { LoadResult } from "../adapters/config-file.js";
import type { FileWatcher } from "../adapters/file-watch.js";
import { watchFiles } from "../adapters/file-watch.js";
import { createHttpServer, listenOn } from "../adapters/http-server.js";
import type { IdentityLookup } from "../adapters/identity.js";
import type { KernelMonitor } from "../adapters/kernel-monitor.js";
import { startKernelMonitor } from "../adapters/kernel-monitor.js";
import type { Notifier } from "../adapters/systemd-notify.js";
import type { HostProbes } from "./dataplane.js";
import { openDataplane } from "./dataplane.js";
import { Guard } from "./guard.js";
import { createGuardMetrics } from "./metrics.js";
import { createScheduler } from "./scheduler.js";
import type { TriggerKind } from "./scheduler.js";

export interface DaemonDeps {
  readonly configPath: string;
  readonly logger: Logger;
  readonly notifier: Notifier;
  readonly probes: HostProbes;
  readonly lookup: IdentityLookup;
  readonly loadConfig: (path: string) => Promise<LoadResult>;
  readonly identityFiles?: readonly string[];
  /** Registers signal handlers; returns a function that removes them. */
  readonly onSignals: (handlers: { reload: () => void; stop: () => void }) => () => void;
}

export interface RunningDaemon {
  /** Resolves with the exit code once the daemon has stopped. */
  readonly done: Promise<number>;
  readonly address?: string;
}

/** Post-write re-checks: another manager that rewrites the table shortly after us is caught. */
const POSTWRITE_DELAYS_MS = [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000];
const STUCK_RECONCILE_MS = 30_000;

export async function startDaemon(deps: DaemonDeps): Promise<RunningDaemon> {
  const { logger, notifier, configPath } = deps;
  const metrics = createGuardMetrics(new Registry());
  const startedAt = Date.now();
  let postwriteTimers: NodeJS.Timeout[] = [];
  let triggerFn: (kind: TriggerKind) => void = () => undefined;

  const guard = new Guard({
    configPath,
    loadConfig: deps.loadConfig,
    lookup: deps.lookup,
    openDataplane: (config: Config) => openDataplane(deps.probes, config.backend),
    logger,
    metrics,
    now: () => Date.now(),
    onWrote: () => {
      for (const timer of postwriteTimers) clearTimeout(timer);
      postwriteTimers = POSTWRITE_DELAYS_MS.map((ms) =>
        setTimeout(() => {
          triggerFn("postwrite");
        }, ms),
      );
    },
  });

  if (!(await guard.loadConfig())) {
    const error = guard.snapshot().configError ?? "invalid config";
    process.stderr.write(
      `${error}\n${configPath}: refusing to start; fix the config and start again\n`,
    );
    return { done: Promise.resolve(1) };
  }

  let reloadPending = false;
  /** SIGHUP reloads finished (READY=1 sent again); `imds-guard reload` waits for it to rise. */
  let reloadsCompleted = 0;
  let lastStatusLine = "";
  let sentReady = false;
  let listening = false;
  let monitor: KernelMonitor | undefined;

  const statusLine = (): string => {
    const snap = guard.snapshot();
    const config = guard.currentConfig;
    const rules = Object.values(snap.status?.families ?? {}).reduce((sum, s) => sum + s.rules, 0);
    const drift = snap.lastDrift
      ? `${snap.lastDrift.reasons.join("+")} on ${snap.lastDrift.family}, repaired in ${snap.lastDrift.repairMs} ms`
      : "none";
    return `${config?.mode ?? "?"} ${config?.policy ?? "?"}-list, ${snap.policy?.principals.entries.length ?? 0} principal(s), ${rules} rule(s), ${snap.ready ? "in sync" : `NOT READY: ${snap.readyReason}`}, last drift: ${drift}`;
  };

  const ensureMonitor = (): void => {
    const backend = guard.snapshot().status?.backend;
    if (backend === "nft" && monitor === undefined) {
      monitor = startKernelMonitor({
        onEvent: () => {
          triggerFn("event");
        },
        onStateChange: (up, detail) => {
          metrics.monitorUp.set(up ? 1 : 0);
          if (!up)
            logger.warn(
              { detail },
              "kernel ruleset monitor stopped; restarting it (the periodic drift check still runs)",
            );
        },
      });
    } else if (backend === "legacy" && monitor !== undefined) {
      void monitor.stop();
      monitor = undefined;
      metrics.monitorUp.set(0);
    }
  };

  const afterReconcile = async (ok: boolean): Promise<void> => {
    ensureMonitor();
    rearmTimers();
    const line = statusLine();
    if (line !== lastStatusLine) {
      lastStatusLine = line;
      await notifier.status(line);
    }
    // READY=1 promises a working /readyz too, so it waits for the HTTP server.
    if (ok && listening && (!sentReady || reloadPending)) {
      sentReady = true;
      if (reloadPending) reloadsCompleted++;
      reloadPending = false;
      await notifier.ready(line);
      logger.info({ status: line }, "ready");
    }
  };

  const scheduler = createScheduler({
    run: async (batch) => {
      const ok = await guard.reconcile(batch);
      await afterReconcile(ok);
      return ok;
    },
    onQueued: (at) => {
      metrics.lastQueuedTimestamp.set(at / 1000);
    },
  });
  triggerFn = (kind) => {
    scheduler.trigger(kind);
  };

  let pollTimer: NodeJS.Timeout | undefined;
  let nssTimer: NodeJS.Timeout | undefined;
  let armedIntervals = "";
  const rearmTimers = (): void => {
    const config = guard.currentConfig;
    if (!config) return;
    const key = `${config.driftCheckIntervalMs}/${config.nssRefreshIntervalMs}`;
    if (key === armedIntervals) return;
    armedIntervals = key;
    if (pollTimer) clearInterval(pollTimer);
    if (nssTimer) clearInterval(nssTimer);
    pollTimer = setInterval(() => {
      triggerFn("poll");
    }, config.driftCheckIntervalMs);
    nssTimer = setInterval(() => {
      triggerFn("nss");
    }, config.nssRefreshIntervalMs);
  };

  // Start-up: reconcile first, then listen, then READY=1 (sent by afterReconcile on success).
  scheduler.trigger("start");
  await Promise.race([
    scheduler.idle(),
    new Promise((resolveWait) => setTimeout(resolveWait, 5_000)),
  ]);

  const absoluteConfig = resolve(configPath);
  const watcher: FileWatcher = await watchFiles(
    [absoluteConfig, ...(deps.identityFiles ?? ["/etc/passwd", "/etc/group"])],
    (path) => {
      triggerFn(resolve(path) === absoluteConfig ? "config" : "file");
    },
  );

  const healthz = (): { ok: boolean; reason?: string } => {
    const snap = guard.snapshot();
    const now = Date.now();
    if (
      snap.reconcileStartedAt !== undefined &&
      now - snap.reconcileStartedAt > STUCK_RECONCILE_MS
    ) {
      return {
        ok: false,
        reason: `a reconcile has been running for ${Math.round((now - snap.reconcileStartedAt) / 1000)} s`,
      };
    }
    const interval = guard.currentConfig?.driftCheckIntervalMs ?? 2_000;
    const allowedGap = Math.max(3 * interval, 10_000) + (scheduler.failures > 0 ? 30_000 : 0);
    if (snap.lastAttemptAt !== undefined && now - snap.lastAttemptAt > allowedGap) {
      return {
        ok: false,
        reason: `no reconcile for ${Math.round((now - snap.lastAttemptAt) / 1000)} s`,
      };
    }
    return { ok: true };
  };

  const listen = guard.currentConfig?.listen ?? { host: "127.0.0.1", port: 9877 };
  const app = createHttpServer({
    logger,
    handlers: {
      healthz,
      readyz: () => {
        const snap = guard.snapshot();
        return snap.ready ? { ok: true } : { ok: false, reason: snap.readyReason };
      },
      status: () => {
        const snap = guard.snapshot();
        return {
          ...(snap.status ?? {}),
          daemon: {
            uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
            ready: snap.ready,
            readyReason: snap.readyReason,
            lastReconcileAt:
              snap.lastAttemptAt === undefined ? null : new Date(snap.lastAttemptAt).toISOString(),
            lastSuccessAt:
              snap.lastSuccessAt === undefined ? null : new Date(snap.lastSuccessAt).toISOString(),
            lastDrift: snap.lastDrift
              ? { ...snap.lastDrift, at: new Date(snap.lastDrift.at).toISOString() }
              : null,
            configPath: snap.configPath,
            configDigest: snap.configDigest ?? null,
            configError: snap.configError ?? null,
            monitorUp: monitor?.up ?? false,
            reloadsCompleted,
          },
        };
      },
      metrics: async () => ({
        contentType: metrics.registry.contentType,
        body: await metrics.registry.metrics(),
      }),
    },
  });
  const address = await listenOn(app, {
    host: listen.host,
    port: listen.port,
    allowNonLoopback: guard.currentConfig?.listenNonLoopback ?? false,
  });
  logger.info({ address }, "serving /healthz, /readyz, /status, /metrics");
  listening = true;
  if (guard.snapshot().ready) await afterReconcile(true);

  const watchdogMs = notifier.watchdogIntervalMs();
  // Pet the watchdog only while the loop is healthy, so systemd catches a hung loop.
  const watchdogTimer =
    watchdogMs === undefined
      ? undefined
      : setInterval(() => {
          if (healthz().ok) void notifier.watchdog();
        }, watchdogMs);

  let finish: (code: number) => void = () => undefined;
  const done = new Promise<number>((resolveDone) => {
    finish = resolveDone;
  });
  let stopping = false;
  const removeSignals = deps.onSignals({
    reload: () => {
      logger.info("SIGHUP: reloading config and re-resolving principals");
      reloadPending = true;
      void notifier.reloading();
      triggerFn("signal");
    },
    stop: () => {
      if (stopping) return;
      stopping = true;
      logger.info("stopping; the rules stay in force (remove them with `imds-guard uninstall`)");
      const hardStop = setTimeout(() => {
        finish(0);
      }, 4_500);
      hardStop.unref();
      void (async () => {
        if (watchdogTimer) clearInterval(watchdogTimer);
        if (pollTimer) clearInterval(pollTimer);
        if (nssTimer) clearInterval(nssTimer);
        for (const timer of postwriteTimers) clearTimeout(timer);
        await notifier.stopping();
        await Promise.allSettled([watcher.close(), monitor?.stop(), scheduler.stop(), app.close()]);
        removeSignals();
        clearTimeout(hardStop);
        finish(0);
      })();
    },
  });
  return { done, address };
}
