// Runs reconciles one at a time. Triggers carry no data: a watcher, timer, signal or kernel
// event only says "something may have changed". Triggers that arrive while a reconcile runs
// merge into one follow-up run; a failed run is retried with capped exponential backoff.

export type TriggerKind =
  "start" | "event" | "poll" | "postwrite" | "file" | "config" | "signal" | "nss" | "retry";

export interface TriggerBatch {
  readonly kinds: ReadonlySet<TriggerKind>;
  /** When the earliest trigger of this batch arrived (ms, the injected clock). */
  readonly firstQueuedAt: number;
}

export interface Timers {
  readonly now: () => number;
  readonly setTimeout: (fn: () => void, ms: number) => unknown;
  readonly clearTimeout: (handle: unknown) => void;
}

export const realTimers: Timers = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => {
    clearTimeout(handle as NodeJS.Timeout);
  },
};

export interface SchedulerOptions {
  /** Returns true when the run succeeded. Must not throw; a throw counts as a failure. */
  readonly run: (batch: TriggerBatch) => Promise<boolean>;
  readonly debounceMs?: number;
  readonly backoffInitialMs?: number;
  readonly backoffMaxMs?: number;
  readonly timers?: Timers;
  readonly onQueued?: (at: number) => void;
}

export interface Scheduler {
  trigger(kind: TriggerKind): void;
  /** Resolves when nothing is running or queued. */
  idle(): Promise<void>;
  /** Stops scheduling and waits for a running reconcile to finish. */
  stop(): Promise<void>;
  readonly running: boolean;
  /** Consecutive failed runs. */
  readonly failures: number;
}

export function createScheduler(options: SchedulerOptions): Scheduler {
  const timers = options.timers ?? realTimers;
  const debounceMs = options.debounceMs ?? 50;
  const backoffInitialMs = options.backoffInitialMs ?? 100;
  const backoffMaxMs = options.backoffMaxMs ?? 30_000;
  let pending = new Set<TriggerKind>();
  let firstQueuedAt = 0;
  let running: Promise<void> | undefined;
  let timer: unknown;
  let notBefore = 0;
  let failures = 0;
  let stopped = false;
  let idleWaiters: (() => void)[] = [];
  const isStopped = (): boolean => stopped;

  const settleIdle = (): void => {
    if (running === undefined && pending.size === 0) {
      const waiters = idleWaiters;
      idleWaiters = [];
      for (const resolve of waiters) resolve();
    }
  };

  const arm = (): void => {
    if (stopped || running !== undefined || timer !== undefined || pending.size === 0) return;
    const delay = Math.max(debounceMs, notBefore - timers.now());
    timer = timers.setTimeout(() => {
      timer = undefined;
      flush();
    }, delay);
  };

  const flush = (): void => {
    if (stopped || running !== undefined || pending.size === 0) return;
    const batch: TriggerBatch = { kinds: pending, firstQueuedAt };
    pending = new Set();
    running = (async () => {
      let ok: boolean;
      try {
        ok = await options.run(batch);
      } catch {
        ok = false;
      }
      if (ok) {
        failures = 0;
        notBefore = 0;
      } else {
        failures++;
        const backoff = Math.min(backoffMaxMs, backoffInitialMs * 2 ** (failures - 1));
        notBefore = timers.now() + backoff;
        // `stopped` may have been set by stop() while this run was awaited.
        if (!isStopped()) queue("retry");
      }
    })().finally(() => {
      running = undefined;
      arm();
      settleIdle();
    });
  };

  const queue = (kind: TriggerKind): void => {
    if (pending.size === 0) firstQueuedAt = timers.now();
    pending.add(kind);
    options.onQueued?.(timers.now());
  };

  return {
    trigger(kind) {
      if (stopped) return;
      queue(kind);
      arm();
    },
    idle() {
      if (running === undefined && pending.size === 0) return Promise.resolve();
      return new Promise((resolve) => idleWaiters.push(resolve));
    },
    async stop() {
      stopped = true;
      if (timer !== undefined) timers.clearTimeout(timer);
      timer = undefined;
      pending = new Set();
      await running;
      settleIdle();
    },
    get running() {
      return running !== undefined;
    },
    get failures() {
      return failures;
    },
  };
}
