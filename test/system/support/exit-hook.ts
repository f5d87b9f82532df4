// Last-resort teardown when the test process dies without running its `after` hooks (crash,
// SIGINT/SIGTERM/SIGHUP from the runner or an operator). Handlers are synchronous because
// 'exit' listeners cannot await, and each one only removes what its registrant created.

const handlers = new Set<() => void>();
let installed = false;

const FATAL_SIGNALS: readonly NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

function runAll(): void {
  for (const handler of [...handlers]) {
    handlers.delete(handler);
    try {
      handler();
    } catch (error) {
      process.stderr.write(`imds-guard system test: exit cleanup failed: ${String(error)}\n`);
    }
  }
}

/** Runs `cleanup` if the process exits first; the returned function unregisters it. */
export function onExit(cleanup: () => void): () => void {
  if (!installed) {
    installed = true;
    process.on("exit", runAll);
    for (const signal of FATAL_SIGNALS) {
      process.once(signal, () => {
        runAll();
        // Die of the signal as we would have, unless someone else has taken charge of it.
        if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
      });
    }
  }
  handlers.add(cleanup);
  return () => {
    handlers.delete(cleanup);
  };
}

/** Blocks the thread; only for the synchronous exit path, where nothing else can run anyway. */
export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}
