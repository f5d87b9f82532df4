// Watches files for any change (edit, rename-over, delete, re-create) and reports only the
// path: the daemon re-reads what it needs. shadow-utils replaces /etc/passwd and /etc/group by
// rename and an operator may delete and re-create the config, so we watch the parent
// directories (chokidar forgets a file watched by name once it is unlinked) and keep only
// events about the wanted paths.

import { dirname, resolve } from "node:path";
import { watch } from "chokidar";

export interface FileWatcher {
  close(): Promise<void>;
}

export function watchFiles(
  paths: readonly string[],
  onChange: (path: string) => void,
): Promise<FileWatcher> {
  const files = new Set(paths.map((path) => resolve(path)));
  const directories = new Set([...files].map((file) => dirname(file)));
  const watcher = watch([...directories], {
    ignoreInitial: true,
    depth: 0,
    atomic: 50,
    persistent: true,
    // Only our files (and their directories, which chokidar must walk) are watched at all.
    ignored: (path: string) => !files.has(resolve(path)) && !directories.has(resolve(path)),
  });
  watcher.on("all", (_event, path) => {
    if (files.has(resolve(path))) onChange(resolve(path));
  });
  return new Promise((resolveReady, reject) => {
    watcher.once("ready", () => {
      resolveReady({ close: () => watcher.close() });
    });
    watcher.once("error", reject);
  });
}
