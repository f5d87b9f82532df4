// Every Prometheus metric the daemon exports, in one object built on a registry passed in.
// Names follow node_exporter conventions: imds_guard_ prefix, base units, _total counters,
// low-cardinality labels only (family, result, reason, trigger, code, kind, state, backend).

import type { Registry } from "prom-client";
import { Counter, Gauge, Histogram, collectDefaultMetrics, exponentialBuckets } from "prom-client";
import type { Family } from "../core/config-model.js";

export interface GuardMetrics {
  readonly registry: Registry;
  readonly reconcileTotal: Counter<"result">;
  readonly reconcileDuration: Histogram;
  readonly driftDetected: Counter<"family" | "reason" | "trigger">;
  readonly driftRepairDuration: Histogram;
  readonly restoreErrors: Counter<"family" | "code">;
  readonly rules: Gauge<"family">;
  readonly principals: Gauge<"kind" | "state">;
  readonly configReloadSuccessful: Gauge;
  readonly configReloadSuccessTimestamp: Gauge;
  readonly lastReconcileTimestamp: Gauge;
  readonly lastQueuedTimestamp: Gauge;
  readonly refusedPackets: Counter<"family">;
  readonly allowedPackets: Counter<"family">;
  readonly monitorUp: Gauge;
  readonly backendInfo: Gauge<"backend">;
  readonly ready: Gauge;
  /** Feeds the kernel's per-rule counters (reset whenever a rule is rewritten) into monotonic counters. */
  observeKernelCounters(family: Family, attempts: number, refused: number): void;
}

export function createGuardMetrics(registry: Registry, withDefaults = true): GuardMetrics {
  if (withDefaults) {
    collectDefaultMetrics({ register: registry });
    // prom-client exports these gauges with a _total suffix, which promtool (rightly) rejects.
    for (const name of [
      "nodejs_active_handles_total",
      "nodejs_active_requests_total",
      "nodejs_active_resources_total",
    ]) {
      registry.removeSingleMetric(name);
    }
  }
  const registers = [registry];
  const last = new Map<string, number>();
  const metrics = {
    registry,
    reconcileTotal: new Counter({
      name: "imds_guard_reconcile_total",
      help: "Reconciles run, by result (unchanged, changed, error).",
      labelNames: ["result"] as const,
      registers,
    }),
    reconcileDuration: new Histogram({
      name: "imds_guard_reconcile_duration_seconds",
      help: "Time one reconcile took: read, diff and, when needed, write and verify.",
      buckets: exponentialBuckets(0.001, 2, 15),
      registers,
    }),
    driftDetected: new Counter({
      name: "imds_guard_drift_detected_total",
      help: "Times the kernel was found to differ from an unchanged policy, by family, reason and the trigger that found it.",
      labelNames: ["family", "reason", "trigger"] as const,
      registers,
    }),
    driftRepairDuration: new Histogram({
      name: "imds_guard_drift_repair_duration_seconds",
      help: "From the trigger that revealed drift to the verified repair.",
      buckets: exponentialBuckets(0.001, 2, 15),
      registers,
    }),
    restoreErrors: new Counter({
      name: "imds_guard_restore_errors_total",
      help: "Failed reads or writes of the kernel ruleset, by family and error code.",
      labelNames: ["family", "code"] as const,
      registers,
    }),
    rules: new Gauge({
      name: "imds_guard_rules",
      help: "Our rules in the kernel (jumps plus chain rules), by family.",
      labelNames: ["family"] as const,
      registers,
    }),
    principals: new Gauge({
      name: "imds_guard_principals",
      help: "Configured users and groups, by kind and resolution state.",
      labelNames: ["kind", "state"] as const,
      registers,
    }),
    configReloadSuccessful: new Gauge({
      name: "imds_guard_config_last_reload_successful",
      help: "1 when the last config (re)load succeeded, 0 while the last good policy is kept in force.",
      registers,
    }),
    configReloadSuccessTimestamp: new Gauge({
      name: "imds_guard_config_last_reload_success_timestamp_seconds",
      help: "When the config was last loaded successfully.",
      registers,
    }),
    lastReconcileTimestamp: new Gauge({
      name: "imds_guard_last_reconcile_timestamp_seconds",
      help: "When the last reconcile finished (success or not).",
      registers,
    }),
    lastQueuedTimestamp: new Gauge({
      name: "imds_guard_last_queued_timestamp_seconds",
      help: "When a reconcile was last asked for; far ahead of the last reconcile means the loop is stuck.",
      registers,
    }),
    refusedPackets: new Counter({
      name: "imds_guard_refused_packets_total",
      help: "TCP connection attempts (SYNs) to the targets refused (in audit mode: that would have been), by family.",
      labelNames: ["family"] as const,
      registers,
    }),
    allowedPackets: new Counter({
      name: "imds_guard_allowed_packets_total",
      help: "TCP connection attempts (SYNs) to the targets let through, by family.",
      labelNames: ["family"] as const,
      registers,
    }),
    monitorUp: new Gauge({
      name: "imds_guard_monitor_up",
      help: "1 while the kernel ruleset event monitor (nft monitor) runs; 0 on the legacy flavour or when it died.",
      registers,
    }),
    backendInfo: new Gauge({
      name: "imds_guard_backend_info",
      help: "The iptables flavour in use (value 1).",
      labelNames: ["backend"] as const,
      registers,
    }),
    ready: new Gauge({
      name: "imds_guard_ready",
      help: "1 when the kernel matched the policy at the last check.",
      registers,
    }),
    observeKernelCounters(family: Family, attempts: number, refused: number) {
      const feed = (counter: Counter<"family">, key: string, value: number): void => {
        const previous = last.get(key) ?? 0;
        // A lower value means the rule was rewritten and its counter started again from 0.
        const delta = value >= previous ? value - previous : value;
        // inc by 0 too: the series exists (at 0) from the first read, not from the first packet.
        counter.inc({ family }, delta);
        last.set(key, value);
      };
      feed(metrics.refusedPackets, `${family}:refused`, refused);
      feed(metrics.allowedPackets, `${family}:allowed`, Math.max(0, attempts - refused));
    },
  };
  return metrics;
}
