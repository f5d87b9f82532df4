// Loading the config from disk as the daemon does, with real files: a file anyone but root could
// have written is refused before it is parsed (directly, through a symlink, or via its
// directory), a missing file names its path and the fix, and a good file comes back with its digest.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { chmod, chown, mkdir, mkdtemp, realpath, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

import { loadConfigFile } from "../../src/adapters/config-file.js";
import type { ErrorCode } from "../../src/core/errors.js";
import { isImdsGuardError } from "../../src/core/errors.js";

const GOOD = "mode: enforce\nallow:\n  users: [root]\n";
const isRoot = process.getuid?.() === 0;
// Ownership can only be exercised for real as root; elsewhere the mode checks still run.
const options = { allowNonRootOwner: !isRoot };

let base: string;
before(async () => {
  // realpath: the loader reports resolved paths, and tmpdir() may itself be a symlink.
  base = await realpath(await mkdtemp(join(tmpdir(), "imds-guard-config-")));
});
after(async () => {
  await rm(base, { recursive: true, force: true });
});

let counter = 0;
/** A fresh directory (mode 0755) holding config.yaml with the given mode. */
async function fixture(mode: number, text = GOOD): Promise<{ dir: string; file: string }> {
  const dir = join(base, `case-${String(counter++)}`);
  await mkdir(dir);
  await chmod(dir, 0o755);
  const file = join(dir, "config.yaml");
  await writeFile(file, text);
  await chmod(file, mode);
  return { dir, file };
}

async function assertRefused(load: Promise<unknown>, code: ErrorCode, message: string) {
  await assert.rejects(load, (error: unknown) => {
    assert.ok(isImdsGuardError(error, code), String(error));
    assert.equal(error.message, message);
    return true;
  });
}

void describe("a trusted file is loaded", () => {
  const cases: { intent: string; mode: number }[] = [
    { intent: "owner read-write only", mode: 0o600 },
    { intent: "readable by everyone is fine: only writing is a risk", mode: 0o644 },
    { intent: "read-only", mode: 0o400 },
  ];
  for (const { intent, mode } of cases) {
    void it(intent, async () => {
      const { file } = await fixture(mode);
      const result = await loadConfigFile(file, undefined, options);
      assert.ok(result.ok);
      assert.equal(result.text, GOOD);
      assert.equal(result.digest, createHash("sha256").update(GOOD).digest("hex"));
      assert.deepEqual(result.config.principals.users, ["root"]);
      assert.deepEqual(result.warnings, []);
    });
  }

  void it("through a symlink to a trusted file", async () => {
    const { dir, file } = await fixture(0o600);
    const link = join(dir, "link.yaml");
    await symlink(file, link);
    const result = await loadConfigFile(link, undefined, options);
    assert.ok(result.ok);
  });

  void it("an invalid config comes back as problems naming the path given", async () => {
    const { file } = await fixture(0o600, "allow: {users: [root]}\nprotocol: tcp\n");
    const result = await loadConfigFile(file, undefined, options);
    assert.deepEqual(result, {
      ok: false,
      problems: [
        {
          file,
          line: 2,
          col: 1,
          path: "protocol",
          message: 'unknown key; did you mean "protocols"?',
        },
      ],
    });
  });

  void it("bytes that are not UTF-8 are a problem, not mojibake", async () => {
    const { file } = await fixture(0o600);
    await writeFile(file, Buffer.from([0x61, 0x6c, 0xff, 0x3a, 0x0a]));
    const result = await loadConfigFile(file, undefined, options);
    assert.deepEqual(result, {
      ok: false,
      problems: [{ file, line: 1, col: 1, path: "", message: "the file is not valid UTF-8 text" }],
    });
  });
});

void describe("a file someone else could have written is refused before it is parsed", () => {
  const cases: { intent: string; mode: number; shown: string }[] = [
    { intent: "world-writable", mode: 0o666, shown: "0666" },
    { intent: "group-writable", mode: 0o620, shown: "0620" },
    { intent: "other-writable only", mode: 0o602, shown: "0602" },
  ];
  for (const { intent, mode, shown } of cases) {
    void it(intent, async () => {
      // Unparseable content proves the check comes first.
      const { file } = await fixture(mode, "{{{ not yaml");
      await assertRefused(
        loadConfigFile(file, undefined, options),
        "IMDSG_CONFIG_INSECURE",
        `${file}: refusing to use a config file writable by group or others (mode ${shown}); fix: chmod 600 ${file}`,
      );
    });
  }

  void it("a symlink to a world-writable file is judged by the file", async () => {
    const { dir, file } = await fixture(0o666);
    const link = join(dir, "link.yaml");
    await symlink(file, link);
    await assertRefused(
      loadConfigFile(link, undefined, options),
      "IMDSG_CONFIG_INSECURE",
      `${link} (-> ${file}): refusing to use a config file writable by group or others (mode 0666); fix: chmod 600 ${file}`,
    );
  });

  void it("a file in a directory others can write to", async () => {
    const { dir, file } = await fixture(0o600);
    await chmod(dir, 0o777);
    await assertRefused(
      loadConfigFile(file, undefined, options),
      "IMDSG_CONFIG_INSECURE",
      `${dir}: refusing to use a config file in a directory writable by group or others (mode 0777); anyone who can write there can replace the file; fix: chmod go-w ${dir}`,
    );
  });

  void it("a symlink in a directory others can write to, even to a trusted file", async () => {
    const { file } = await fixture(0o600);
    const { dir: openDir } = await fixture(0o600);
    await chmod(openDir, 0o775);
    const link = join(openDir, "link.yaml");
    await symlink(file, link);
    await assertRefused(
      loadConfigFile(link, undefined, options),
      "IMDSG_CONFIG_INSECURE",
      `${openDir}: refusing to use a config file in a directory writable by group or others (mode 0775); anyone who can write there can replace the file; fix: chmod go-w ${openDir}`,
    );
  });

  void it("a directory is not a config file", async () => {
    const { dir } = await fixture(0o600);
    const sub = join(dir, "sub");
    await mkdir(sub, { mode: 0o755 });
    await assertRefused(
      loadConfigFile(sub, undefined, options),
      "IMDSG_CONFIG_INSECURE",
      `${sub}: refusing to use a config path that is a directory; fix: point it at a YAML file`,
    );
  });

  void it("a file not owned by root, unless explicitly allowed", { skip: !isRoot }, async () => {
    const { file } = await fixture(0o600);
    await chown(file, 65534, 65534);
    await assertRefused(
      loadConfigFile(file),
      "IMDSG_CONFIG_INSECURE",
      `${file}: refusing to use a config file owned by uid 65534, not root; fix: chown root:root ${file}`,
    );
    const allowed = await loadConfigFile(file, undefined, { allowNonRootOwner: true });
    assert.ok(allowed.ok);
  });

  void it("a directory not owned by root", { skip: !isRoot }, async () => {
    const { dir, file } = await fixture(0o600);
    await chown(dir, 65534, 65534);
    await assertRefused(
      loadConfigFile(file),
      "IMDSG_CONFIG_INSECURE",
      `${dir}: refusing to use a config file in a directory owned by uid 65534, not root; whoever owns it can replace the file; fix: chown root ${dir}`,
    );
  });
});

void describe("a file that cannot be read names the path and the fix", () => {
  void it("missing", async () => {
    const missing = join(base, "nowhere", "config.yaml");
    await assertRefused(
      loadConfigFile(missing, undefined, options),
      "IMDSG_CONFIG_UNREADABLE",
      `${missing}: cannot read the config file: no such file; fix: create it (an example ships as config/imds-guard.yaml) or give the right path`,
    );
  });

  void it("a dangling symlink", async () => {
    const { dir } = await fixture(0o600);
    const link = join(dir, "dangling.yaml");
    await symlink(join(dir, "gone.yaml"), link);
    await assertRefused(
      loadConfigFile(link, undefined, options),
      "IMDSG_CONFIG_UNREADABLE",
      `${link}: cannot read the config file: no such file; fix: create it (an example ships as config/imds-guard.yaml) or give the right path`,
    );
  });
});
