// Parses the text that `getent passwd` / `getent group` print (the /etc/passwd and /etc/group
// line formats). Pure: the lookup itself lives in src/adapters/identity.ts.

export interface PasswdEntry {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}

export interface GroupEntry {
  readonly name: string;
  readonly gid: number;
  /** Explicit members as listed in the group entry (names, not uids). */
  readonly members: readonly string[];
}

/** What NSS told us, merged from every lookup of one resolve. */
export interface NssSnapshot {
  readonly passwd: readonly PasswdEntry[];
  readonly groups: readonly GroupEntry[];
}

function parseId(field: string | undefined): number | undefined {
  if (field === undefined || !/^\d+$/.test(field)) return undefined;
  const id = Number(field);
  return id <= 0xfffffffe ? id : undefined;
}

/** Lines that do not have the passwd shape are skipped: NSS modules never print them. */
export function parsePasswd(text: string): PasswdEntry[] {
  const entries: PasswdEntry[] = [];
  for (const line of text.split("\n")) {
    const fields = line.split(":");
    if (fields.length < 7) continue;
    const uid = parseId(fields[2]);
    const gid = parseId(fields[3]);
    const name = fields[0];
    if (name === undefined || name === "" || uid === undefined || gid === undefined) continue;
    entries.push({ name, uid, gid });
  }
  return entries;
}

export function parseGroup(text: string): GroupEntry[] {
  const entries: GroupEntry[] = [];
  for (const line of text.split("\n")) {
    const fields = line.split(":");
    if (fields.length < 4) continue;
    const name = fields[0];
    const gid = parseId(fields[2]);
    if (name === undefined || name === "" || gid === undefined) continue;
    const members = (fields[3] ?? "").split(",").filter((member) => member !== "");
    entries.push({ name, gid, members });
  }
  return entries;
}
