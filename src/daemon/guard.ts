// The daemon's reconcile: keep the kernel equal to the last good policy. Config, NSS and the
// kernel are re-read as the batch's triggers require; a bad config or a failed write never
// removes or loosens the rules in force, it only turns readiness and metrics red.

import type { Logger } from "pino";
import type { Config, Family } from "../core/config-model.js";
import { formatProblem } from "../core/config.js";
import type { DriftFinding } from "../core/diff.js";
import { isImdsGuardError } from "../core/errors.js";
import { familyStatus } from "../core/status.js";
import type { FamilyStatus } from "../core/status.js";
import type { DesiredFamily } from "../core/ruleset.js";
import type { IdentityLookup } from "../adapters/identity.js";
import { createThrottle } from "../adapters/logger.js";
import type { Throttle } from "../adapters/logger.js";
import type { LoadResult } from "../adapters/config-file.js";
import type { Dataplane } from "./dataplane.js";
import type { GuardMetrics } from "./metrics.js";
import type { ResolvedPolicy } from "./policy.js";
import { heldDenialsFrom } from "./held-denials.js";
import { resolvePolicy } from "./policy.js";
import { reconcileFamily } from "./reconcile.js";
import type { TriggerBatch, TriggerKind } from "./scheduler.js";
import type { StatusReport } from "./status-report.js";

export interface GuardDeps {
  readonly configPath: string;
  readonly loadConfig: (path: string) => Promise<LoadResult>;
  readonly lookup: IdentityLookup;
  readonly openDataplane: (config: Config) => Promise<Dataplane>;
  readonly logger: Logger;
  readonly metrics: GuardMetrics;
  readonly now: () => number;
  /** After a reconcile that wrote, to schedule the post-write re-checks. */
  readonly onWrote?: () => void;
}

export interface DriftRecord {
  readonly at: number;
  readonly family: Family;
  readonly trigger: string;
  readonly reasons: readonly string[];
  readonly repairMs: number;
}

export interface GuardSnapshot {
  readonly ready: boolean;
  readonly readyReason: string;
  readonly configPath: string;
  readonly configDigest?: string;
  readonly configLoadedAt?: number;
  readonly configError?: string;
  readonly lastAttemptAt?: number;
  readonly lastSuccessAt?: number;
  readonly lastDrift?: DriftRecord;
  readonly reconcileStartedAt?: number;
  readonly status?: StatusReport;
  readonly policy?: ResolvedPolicy;
}

const TRIGGER_LABEL: Record<TriggerKind, string> = {
  event: "event",
  poll: "poll",
  retry: "poll",
  postwrite: "postwrite",
  file: "file",
  config: "file",
  signal: "file",
  nss: "file",
  start: "file",
};

/** The label of the trigger that most plausibly revealed the drift. */
function triggerLabel(kinds: ReadonlySet<TriggerKind>): string {
  for (const kind of [
    "event",
    "file",
    "config",
    "signal",
    "nss",
    "postwrite",
    "poll",
    "retry",
    "start",
  ] as const) {
    if (kinds.has(kind)) return TRIGGER_LABEL[kind];
  }
  return "poll";
}

const RESOLVE_TRIGGERS: readonly TriggerKind[] = ["start", "file", "config", "signal", "nss"];
const CONFIG_TRIGGERS: readonly TriggerKind[] = ["start", "config", "signal"];

function desiredKey(f: DesiredFamily): string {
  return JSON.stringify([f.installed, f.chains, f.jumps.map((j) => j.spec)]);
}

export class Guard {
  private config?: { config: Config; digest: string; loadedAt: number };
  private configError?: string;
  private policy?: ResolvedPolicy;
  /** Per family, so one family's failure never makes the other's drift look like a policy change. */
  private readonly appliedKeys = new Map<Family, string>();
  /** Drift seen but not yet repaired: counted once, timed from the trigger that revealed it. */
  private readonly pendingDrift = new Map<Family, { trigger: string; since: number }>();
  private dataplane?: Dataplane;
  private dataplaneBackend?: string;
  private ready = false;
  private readyReason = "starting: no reconcile has finished yet";
  private lastAttemptAt?: number;
  private lastSuccessAt?: number;
  private reconcileStartedAt?: number;
  private lastDrift?: DriftRecord;
  private status?: StatusReport;
  /** A failing iptables is retried every few seconds; say so once a minute, with a count. */
  private readonly errorThrottle: Throttle;

  constructor(private readonly deps: GuardDeps) {
    this.errorThrottle = createThrottle(60_000, deps.now);
  }

  snapshot(): GuardSnapshot {
    return {
      ready: this.ready,
      readyReason: this.readyReason,
      configPath: this.deps.configPath,
      ...(this.config
        ? { configDigest: this.config.digest, configLoadedAt: this.config.loadedAt }
        : {}),
      ...(this.configError !== undefined ? { configError: this.configError } : {}),
      ...(this.lastAttemptAt !== undefined ? { lastAttemptAt: this.lastAttemptAt } : {}),
      ...(this.lastSuccessAt !== undefined ? { lastSuccessAt: this.lastSuccessAt } : {}),
      ...(this.lastDrift ? { lastDrift: this.lastDrift } : {}),
      ...(this.reconcileStartedAt !== undefined
        ? { reconcileStartedAt: this.reconcileStartedAt }
        : {}),
      ...(this.status ? { status: this.status } : {}),
      ...(this.policy ? { policy: this.policy } : {}),
    };
  }

  get currentConfig(): Config | undefined {
    return this.config?.config;
  }

  /**
   * Loads the config. Returns false (and keeps the last good one) when it is invalid or
   * unreadable; at start-up the caller exits on false.
   */
  async loadConfig(): Promise<boolean> {
    const { logger, metrics, configPath } = this.deps;
    let loaded: LoadResult;
    try {
      loaded = await this.deps.loadConfig(configPath);
    } catch (error) {
      const message = isImdsGuardError(error) ? `[${error.code}] ${error.message}` : String(error);
      return this.rejectConfig([message]);
    }
    if (!loaded.ok) return this.rejectConfig(loaded.problems.map(formatProblem));
    metrics.configReloadSuccessful.set(1);
    metrics.configReloadSuccessTimestamp.set(this.deps.now() / 1000);
    this.configError = undefined;
    if (this.config?.digest !== loaded.digest) {
      for (const warning of loaded.warnings) logger.warn({ config: configPath }, warning);
      logger.info(
        {
          config: configPath,
          digest: loaded.digest,
          mode: loaded.config.mode,
          policy: loaded.config.policy,
        },
        this.config ? "config reloaded" : "config loaded",
      );
      this.config = { config: loaded.config, digest: loaded.digest, loadedAt: this.deps.now() };
      this.policy = undefined;
    }
    return true;
  }

  private rejectConfig(errors: string[]): boolean {
    const { logger, metrics, configPath } = this.deps;
    metrics.configReloadSuccessful.set(0);
    const fallback = this.config ? "the last good policy stays in force" : "no policy loaded";
    this.configError = errors.join("\n");
    logger.error({ config: configPath, errors }, `config rejected; ${fallback}`);
    return false;
  }

  /** One reconcile for a batch of triggers. Returns true when the kernel is verified in sync. */
  async reconcile(batch: TriggerBatch): Promise<boolean> {
    const { logger, metrics } = this.deps;
    const started = this.deps.now();
    this.reconcileStartedAt = started;
    const endTimer = metrics.reconcileDuration.startTimer();
    try {
      if (!this.config || CONFIG_TRIGGERS.some((kind) => batch.kinds.has(kind)))
        await this.loadConfig();
      const current = this.config;
      if (!current) return this.fail("no valid config has been loaded");
      if (!this.dataplane || this.dataplaneBackend !== current.config.backend) {
        this.dataplane = await this.deps.openDataplane(current.config);
        this.dataplaneBackend = current.config.backend;
        for (const warning of this.dataplane.warnings) logger.warn(warning);
        for (const family of this.dataplane.families) metrics.observeKernelCounters(family, 0, 0);
        metrics.backendInfo.reset();
        metrics.backendInfo.set({ backend: this.dataplane.iptables.flavour }, 1);
        logger.info(
          {
            backend: this.dataplane.iptables.flavour,
            reason: this.dataplane.decision.reason,
            families: this.dataplane.families,
          },
          "iptables backend chosen",
        );
      }
      const dataplane = this.dataplane;
      if (!this.policy || RESOLVE_TRIGGERS.some((kind) => batch.kinds.has(kind))) {
        const previous = this.policy;
        const inKernel = heldDenialsFrom(dataplane.iptables, dataplane.families);
        // What we last refused counts too: a flush just before NSS failed must not forget it.
        const remembered = previous?.config.policy === "deny" ? previous.principals : undefined;
        this.policy = await resolvePolicy(current.config, this.deps.lookup, async () => {
          const held = await inKernel();
          return {
            uids: [...held.uids, ...(remembered?.uids ?? [])],
            gids: [...held.gids, ...(remembered?.gids ?? [])],
          };
        });
        for (const line of this.policy.unresolved) {
          if (previous?.unresolved.includes(line) !== true)
            logger.warn({ config: this.deps.configPath }, line);
        }
        this.recordPrincipals(this.policy);
      }
      const policy = this.policy;
      const statuses: Partial<Record<Family, FamilyStatus>> = {};
      const errors: string[] = [];
      let wrote = false;
      for (const family of dataplane.families) {
        const desired = policy.desired[family];
        const policyChanged = this.appliedKeys.get(family) !== desiredKey(desired);
        const outcome = await reconcileFamily(dataplane.iptables, desired, true);
        if (outcome.before) {
          // What the kernel counted since the last read, before the write reset our chains.
          const before = familyStatus(desired, outcome.before, policy.principals);
          metrics.observeKernelCounters(family, before.attempts, before.refused);
        }
        if (outcome.observed) {
          const status = familyStatus(desired, outcome.observed, policy.principals);
          statuses[family] = status;
          metrics.rules.set({ family }, status.rules);
          metrics.observeKernelCounters(family, status.attempts, status.refused);
        }
        if (outcome.wrote) wrote = true;
        if (outcome.plan.findings.length > 0 && !policyChanged)
          this.recordDrift(family, outcome.plan.findings, batch, outcome.wrote && !outcome.error);
        else if (policyChanged) this.pendingDrift.delete(family);
        if (!outcome.error) this.appliedKeys.set(family, desiredKey(desired));
        if (outcome.error) {
          metrics.restoreErrors.inc({ family, code: outcome.error.code });
          errors.push(`${family}: [${outcome.error.code}] ${outcome.error.message}`);
          const repeat = this.errorThrottle.check(
            `${family}:${outcome.error.code}:${outcome.error.message}`,
          );
          if (repeat.log) {
            logger.error(
              {
                family,
                code: outcome.error.code,
                details: outcome.error.details,
                suppressed: repeat.suppressed,
              },
              outcome.error.message,
            );
          }
        } else if (outcome.wrote && policyChanged) {
          logger.info(
            {
              family,
              changes: outcome.plan.findings.map((f) => f.reason),
              backend: dataplane.iptables.flavour,
            },
            "policy applied",
          );
        }
      }
      this.status = {
        backend: dataplane.iptables.flavour,
        mode: current.config.mode,
        policy: current.config.policy,
        installed: Object.values(statuses).some((s) => s.installed),
        inSync: errors.length === 0 && Object.values(statuses).every((s) => s.inSync),
        families: statuses,
        unresolved: policy.unresolved,
        warnings: dataplane.warnings,
      };
      if (wrote) this.deps.onWrote?.();
      metrics.reconcileTotal.inc({
        result: errors.length > 0 ? "error" : wrote ? "changed" : "unchanged",
      });
      if (errors.length > 0) return this.fail(errors.join("; "));
      this.lastSuccessAt = this.deps.now();
      this.setReady(
        true,
        this.configError === undefined
          ? "kernel matches the policy"
          : "kernel matches the last good policy; the current config file is invalid",
      );
      return true;
    } catch (error) {
      const message = isImdsGuardError(error)
        ? `[${error.code}] ${error.message}`
        : error instanceof Error
          ? error.message
          : String(error);
      metrics.reconcileTotal.inc({ result: "error" });
      const repeat = this.errorThrottle.check(`exception:${message}`);
      if (repeat.log)
        logger.error({ err: error, suppressed: repeat.suppressed }, `reconcile failed: ${message}`);
      return this.fail(message);
    } finally {
      endTimer();
      this.reconcileStartedAt = undefined;
      this.lastAttemptAt = this.deps.now();
      metrics.lastReconcileTimestamp.set(this.lastAttemptAt / 1000);
    }
  }

  private fail(reason: string): boolean {
    this.setReady(false, reason);
    return false;
  }

  private setReady(ready: boolean, reason: string): void {
    this.ready = ready;
    this.readyReason = reason;
    this.deps.metrics.ready.set(ready ? 1 : 0);
  }

  private recordPrincipals(policy: ResolvedPolicy): void {
    const gauge = this.deps.metrics.principals;
    gauge.reset();
    for (const kind of ["user", "group"] as const) {
      for (const state of ["resolved", "numeric", "unresolved"] as const) {
        gauge.set(
          { kind, state },
          policy.principals.entries.filter((e) => e.kind === kind && e.state === state).length,
        );
      }
    }
  }

  private recordDrift(
    family: Family,
    findings: readonly DriftFinding[],
    batch: TriggerBatch,
    repaired: boolean,
  ): void {
    let pending = this.pendingDrift.get(family);
    const firstSeen = pending === undefined;
    if (!pending) {
      pending = { trigger: triggerLabel(batch.kinds), since: batch.firstQueuedAt };
      this.pendingDrift.set(family, pending);
      for (const finding of findings)
        this.deps.metrics.driftDetected.inc({
          family,
          reason: finding.reason,
          trigger: pending.trigger,
        });
    }
    const trigger = pending.trigger;
    const repairMs = this.deps.now() - pending.since;
    if (repaired) {
      this.deps.metrics.driftRepairDuration.observe(repairMs / 1000);
      this.pendingDrift.delete(family);
    }
    this.lastDrift = {
      at: this.deps.now(),
      family,
      trigger,
      reasons: findings.map((f) => f.reason),
      repairMs,
    };
    // One line when drift is found and one when it is repaired, not one per failed retry.
    if (!firstSeen && !repaired) return;
    this.deps.logger.warn(
      {
        family,
        trigger,
        reasons: this.lastDrift.reasons,
        details: findings.map((f) => f.detail),
        repairMs,
        repaired,
      },
      repaired ? `drift repaired in ${repairMs} ms` : "drift found; repair failed",
    );
  }
}
