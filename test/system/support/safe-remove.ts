// Removes directory trees the system test created (container overlays, debootstrap targets).
// Must never follow a mount out of the tree: whatever is still mounted below the tree (a
// leaked /proc of debootstrap, a bind mount of the repository) is unmounted first, and if
// anything stays mounted the tree is left alone rather than deleted through the mount.

import { execFileSync } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";

/** Mount points at or below `dir`, deepest first, as listed in /proc/self/mountinfo. */
export function mountsUnder(dir: string): string[] {
  const root = dir.replace(/\/+$/, "");
  const found: string[] = [];
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    // Field 5 is the mount point, with space, tab, newline and backslash as octal escapes.
    const field = line.split(" ")[4];
    if (field === undefined) continue;
    const point = field.replace(/\\([0-7]{3})/g, (_, octal: string) =>
      String.fromCharCode(parseInt(octal, 8)),
    );
    if (point === root || point.startsWith(`${root}/`)) found.push(point);
  }
  return found.sort((a, b) => b.length - a.length);
}

/** rm -rf, after lazily unmounting anything below; throws instead of deleting through a mount. */
export function removeTreeSync(dir: string): void {
  for (const point of mountsUnder(dir)) {
    try {
      execFileSync("umount", ["--lazy", point], { stdio: "ignore" });
    } catch {
      // checked below
    }
  }
  const left = mountsUnder(dir);
  if (left.length > 0) {
    throw new Error(`not removing ${dir}: still mounted below it: ${left.join(", ")}`);
  }
  rmSync(dir, { recursive: true, force: true });
}
