// Watches files for any change (edit, rename-over, delete, re-create) and reports only the
// path: the daemon re-reads what it needs. shadow-utils replaces /etc/passwd and /etc/group by
// rename, so we watch the paths, not the inodes (chokidar's atomic handling follows them).

import { watch } from "chokidar";

export interface FileWatcher {
  close(): Promise<void>;
}

export function watchFiles(
  paths: readonly string[],
  onChange: (path: string) => void,
): Promise<FileWatcher> {
  const watcher = watch([...paths], { ignoreInitial: true, atomic: 50, persistent: true });
  watcher.on("all", (_event, path) => {
    onChange(path);
  });
  return new Promise((resolve, reject) => {
    watcher.once("ready", () => {
      resolve({ close: () => watcher.close() });
    });
    watcher.once("error", reject);
  });
}
