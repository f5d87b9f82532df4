// Small reads of /proc that decide which families and flavours are usable. They are read in
// the calling process's network namespace (/proc/sys/net and /proc/net are per namespace).

import { access, readFile } from "node:fs/promises";

export async function legacyTablesLoaded(): Promise<boolean> {
  try {
    await access("/proc/net/ip_tables_names");
    return true;
  } catch {
    return false;
  }
}

/** IPv6 is usable unless the kernel lacks it or it is disabled for the namespace. */
export async function ipv6Enabled(): Promise<boolean> {
  try {
    return (await readFile("/proc/sys/net/ipv6/conf/all/disable_ipv6", "utf8")).trim() === "0";
  } catch {
    return false;
  }
}
