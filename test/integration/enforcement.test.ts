// The enforcement matrix on the real kernel: every verdict here is a real connection from a
// real uid inside a throwaway instance namespace to the fake metadata service, after
// `imds-guard apply` ran in that namespace. IPv4 and IPv6, ports 80 and 443, both flavours.

import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { execa } from "execa";
import { LOG_PREFIX } from "../../src/core/ruleset.js";
import type {
  ConnectOutcome,
  Family,
  ProbeUser,
  Testbed,
  TestGroup,
  TestUser,
} from "./harness/index.js";
import { HTTP_PORTS, createTestbed } from "./harness/index.js";
import type { Flavour } from "./support.js";
import type { VerdictOptions } from "./support.js";
import {
  expectVerdict as expectVerdictIn,
  imdsGuard,
  iptablesIn,
  makeConfigDir,
  saveRuleset,
  until,
} from "./support.js";

const FAMILIES: readonly Family[] = ["ipv4", "ipv6"];
const ROOT: ProbeUser = { uid: 0, gid: 0, groups: [0] };

let testbed: Testbed;
let configs: Awaited<ReturnType<typeof makeConfigDir>>;
let trusty: TestUser;
let apache: TestUser;
let bystander: TestUser;
let readers: TestGroup;
let member: TestUser;
let primary: TestUser;

before(async () => {
  testbed = await createTestbed();
  configs = await makeConfigDir();
  readers = await testbed.createGroup("readers");
  trusty = await testbed.createUser("trusty");
  apache = await testbed.createUser("apache");
  bystander = await testbed.createUser("bystander");
  member = await testbed.createUser("member", { groups: [readers.name] });
  primary = await testbed.createUser("primary", { primaryGroup: readers.name });
});

after(async () => {
  await testbed.cleanup();
  await configs.remove();
});

/** Applies `yaml` (after removing whatever an earlier case installed) and checks it worked. */
async function applyPolicy(yaml: string, flavour: Flavour = "nft"): Promise<string> {
  await uninstall();
  const path = await configs.write("config.yaml", `backend: ${flavour}\n${yaml}`);
  const result = await imdsGuard(testbed, ["apply", "--config", path]);
  assert.equal(result.exitCode, 0, `apply failed:\n${result.stdout}\n${result.stderr}`);
  return path;
}

async function uninstall(): Promise<void> {
  const result = await imdsGuard(testbed, ["uninstall"]);
  assert.equal(result.exitCode, 0, result.stderr);
}

function describeOutcome(outcome: ConnectOutcome): string {
  return `${outcome.result} in ${outcome.ms} ms${outcome.detail === undefined ? "" : ` (${outcome.detail})`}`;
}

function expectVerdict(
  user: ProbeUser,
  family: Family,
  expected: "200" | "refused",
  options: VerdictOptions = {},
): Promise<ConnectOutcome> {
  return expectVerdictIn(testbed, user, family, expected, options);
}

/** Only the identity, no supplementary groups: what an already running process has. */
function bare(user: TestUser, groups: readonly number[] = [user.gid]): ProbeUser {
  return { uid: user.uid, gid: user.gid, groups };
}

void describe("allow-list of users on iptables-nft", () => {
  before(() => applyPolicy(`allow:\n  users: [${trusty.name}]\n`));

  for (const family of FAMILIES) {
    for (const port of HTTP_PORTS) {
      void test(`the allowed user reaches the metadata service (${family}, port ${port})`, async () => {
        await expectVerdict(trusty, family, "200", { port });
      });
      void test(`another user is refused at once with a reset (${family}, port ${port})`, async () => {
        await expectVerdict(apache, family, "refused", { port });
      });
    }
    void test(`root is refused too when the allow-list does not name it (${family})`, async () => {
      await expectVerdict(ROOT, family, "refused");
    });
    void test(`a refused user's UDP datagram is rejected, the allowed user's answered (${family})`, async () => {
      await expectVerdict(apache, family, "refused", { protocol: "udp" });
      await expectVerdict(trusty, family, "200", { protocol: "udp" });
    });
    void test(`traffic to any other address is untouched, even for a refused user (${family})`, async () => {
      await expectVerdict(apache, family, "200", { host: testbed.other[family] });
    });
  }

  void test("a second apply writes nothing: the whole ruleset is byte-for-byte the same", async () => {
    const before = await saveRuleset(testbed);
    const path = await configs.write(
      "config.yaml",
      `backend: nft\nallow:\n  users: [${trusty.name}]\n`,
    );
    const result = await imdsGuard(testbed, ["apply", "--config", path]);
    assert.equal(result.exitCode, 0, result.stderr);
    assert.match(result.stdout, /ipv4: already in sync, nothing written/);
    assert.match(result.stdout, /ipv6: already in sync, nothing written/);
    assert.equal(await saveRuleset(testbed), before);
  });

  void test("status reports in sync (exit 0) with the refused attempts counted", async () => {
    const path = await configs.write(
      "config.yaml",
      `backend: nft\nallow:\n  users: [${trusty.name}]\n`,
    );
    const result = await imdsGuard(testbed, ["status", "--json", "--config", path]);
    assert.equal(result.exitCode, 0, result.stdout + result.stderr);
    const report = JSON.parse(result.stdout) as {
      inSync: boolean;
      backend: string;
      families: Record<
        Family,
        { refused: number; principals: { id: number; verdict: string; packets: number }[] }
      >;
    };
    assert.equal(report.inSync, true);
    assert.equal(report.backend, "nft");
    for (const family of FAMILIES) {
      assert.ok(report.families[family].refused > 0, `${family}: refused attempts were counted`);
      const allowed = report.families[family].principals.find((p) => p.id === trusty.uid);
      assert.equal(allowed?.verdict, "allowed");
    }
  });

  void test("status says drifted (exit 3) after a foreign rule lands above our jump, and not installed (exit 1) after uninstall", async () => {
    const path = await configs.write(
      "config.yaml",
      `backend: nft\nallow:\n  users: [${trusty.name}]\n`,
    );
    await iptablesIn(testbed, ["iptables", "-I", "OUTPUT", "1", "-j", "ACCEPT"]);
    const drifted = await imdsGuard(testbed, ["status", "--config", path]);
    assert.equal(drifted.exitCode, 3, drifted.stdout);
    assert.match(drifted.stdout, /displaced_jump/);
    await iptablesIn(testbed, ["iptables", "-D", "OUTPUT", "1"]);
    await uninstall();
    const gone = await imdsGuard(testbed, ["status", "--config", path]);
    assert.equal(gone.exitCode, 1, gone.stdout);
  });
});

void describe("allow-list of a group", () => {
  before(() => applyPolicy(`allow:\n  groups: [${readers.name}]\n`));

  for (const family of FAMILIES) {
    void test(`a member listed in /etc/group is allowed, even without the group in its process (${family})`, async () => {
      await expectVerdict(bare(member), family, "200");
    });
    void test(`a user whose primary group it is is allowed (${family})`, async () => {
      await expectVerdict(primary, family, "200");
    });
    void test(`a process that carries the group only as a supplementary group is allowed (${family})`, async () => {
      await expectVerdict(bare(bystander, [bystander.gid, readers.gid]), family, "200");
    });
    void test(`a non-member is refused (${family})`, async () => {
      await expectVerdict(bystander, family, "refused");
    });
  }
});

void describe("deny-list of one service account", () => {
  before(() => applyPolicy(`deny:\n  users: [${apache.name}]\n`));

  for (const family of FAMILIES) {
    void test(`the denied account is refused (${family})`, async () => {
      await expectVerdict(apache, family, "refused");
      await expectVerdict(apache, family, "refused", { protocol: "udp" });
    });
    void test(`everyone else passes, root included (${family})`, async () => {
      await expectVerdict(trusty, family, "200");
      await expectVerdict(ROOT, family, "200");
    });
  }
});

void describe("audit mode", () => {
  let path: string;
  before(async () => {
    path = await applyPolicy(`mode: audit\nallow:\n  users: [${trusty.name}]\n`);
  });

  void test("everyone reaches the service, and the would-be refusals are counted", async () => {
    for (const family of FAMILIES) {
      await expectVerdict(trusty, family, "200");
      await expectVerdict(apache, family, "200");
    }
    const result = await imdsGuard(testbed, ["status", "--json", "--config", path]);
    const report = JSON.parse(result.stdout) as {
      families: Record<Family, { refused: number; attempts: number }>;
    };
    for (const family of FAMILIES) {
      assert.ok(report.families[family].refused >= 1, `${family}: would-be refusal counted`);
      assert.ok(report.families[family].attempts >= 2, `${family}: both attempts counted`);
    }
  });
});

void describe("an established connection of a user who becomes refused", () => {
  void test("is cut at its next packet after apply (the owner match applies per packet)", async () => {
    await applyPolicy(`deny:\n  users: ["4294967000"]\n`);
    for (const family of FAMILIES) {
      const held = await testbed.holdConnection({ user: apache, family });
      try {
        assert.equal(held.first.result, "200", describeOutcome(held.first));
        const path = await configs.write(
          "config.yaml",
          `backend: nft\ndeny:\n  users: [${apache.name}]\n`,
        );
        const applied = await imdsGuard(testbed, ["apply", "--config", path]);
        assert.equal(applied.exitCode, 0, applied.stderr);
        const next = await held.next();
        assert.equal(next.result, "refused", `${family}: ${describeOutcome(next)}`);
      } finally {
        await held.close();
      }
      await uninstall();
      await applyPolicy(`deny:\n  users: ["4294967000"]\n`);
    }
  });
});

void describe("detours around the guard", () => {
  const policy = () => `allow:\n  users: [${trusty.name}]\n`;
  after(async () => {
    for (const tool of ["iptables", "ip6tables"]) {
      await iptablesIn(testbed, [tool, "-t", "nat", "-F", "OUTPUT"]);
      await iptablesIn(testbed, [tool, "-t", "raw", "-F", "OUTPUT"]);
    }
  });

  for (const family of FAMILIES) {
    const tool = family === "ipv4" ? "iptables" : "ip6tables";
    void test(`a nat-table DNAT of the target to another address does not help a refused user (${family})`, async () => {
      await applyPolicy(policy());
      const other = testbed.other[family];
      await iptablesIn(testbed, [
        tool,
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-d",
        testbed.targets[family],
        "-p",
        "tcp",
        "-j",
        "DNAT",
        "--to-destination",
        family === "ipv4" ? other : `[${other}]`,
      ]);
      try {
        await expectVerdict(apache, family, "refused");
        const allowed = await expectVerdict(trusty, family, "200");
        assert.ok(
          allowed.servedBy?.startsWith(other),
          `the detour is real: served by ${allowed.servedBy ?? "?"}`,
        );
        // Why two jumps: without the conntrack one, the detour gets through.
        const output = await testbed.exec([`${tool}-save`, "-t", "filter"]);
        const ctJump = output.stdout.split("\n").find((line) => line.includes("--ctorigdst"));
        assert.ok(ctJump !== undefined);
        await iptablesIn(testbed, [tool, "-D", "OUTPUT", "2"]);
        await expectVerdict(apache, family, "200");
      } finally {
        await iptablesIn(testbed, [tool, "-t", "nat", "-F", "OUTPUT"]);
      }
    });

    void test(`a raw-table NOTRACK of the target does not help a refused user (${family})`, async () => {
      await applyPolicy(policy());
      await iptablesIn(testbed, [
        tool,
        "-t",
        "raw",
        "-A",
        "OUTPUT",
        "-d",
        testbed.targets[family],
        "-j",
        "NOTRACK",
      ]);
      try {
        await expectVerdict(apache, family, "refused");
        await expectVerdict(trusty, family, "200");
      } finally {
        await iptablesIn(testbed, [tool, "-t", "raw", "-F", "OUTPUT"]);
      }
    });
  }
});

void describe("foreign rules", () => {
  const foreign: readonly (readonly string[])[] = [
    ["-A", "OUTPUT", "-p", "udp", "--dport", "5353", "-j", "ACCEPT"],
    [
      "-I",
      "OUTPUT",
      "1",
      "-m",
      "comment",
      "--comment",
      "ops: keep me first",
      "-p",
      "icmp",
      "-j",
      "ACCEPT",
    ],
    ["-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
    ["-N", "OPS-CHAIN"],
    ["-A", "OPS-CHAIN", "-s", "10.0.0.0/8", "-j", "RETURN"],
    ["-A", "OUTPUT", "-j", "OPS-CHAIN"],
  ];

  void test("survive apply and uninstall byte for byte, on both flavours", async () => {
    for (const flavour of ["nft", "legacy"] as const) {
      await uninstall();
      for (const rule of foreign) await iptablesIn(testbed, [`iptables-${flavour}`, ...rule]);
      await iptablesIn(testbed, [
        `ip6tables-${flavour}`,
        "-A",
        "OUTPUT",
        "-p",
        "udp",
        "--dport",
        "5353",
        "-j",
        "ACCEPT",
      ]);
      const pristine = await saveRuleset(testbed, flavour);
      const path = await configs.write(
        "config.yaml",
        `backend: ${flavour}\nallow:\n  users: [${trusty.name}]\n`,
      );
      const applied = await imdsGuard(testbed, ["apply", "--config", path]);
      assert.equal(applied.exitCode, 0, applied.stderr);
      const installed = await saveRuleset(testbed, flavour);
      const withoutOurs = installed
        .split("\n")
        .filter((line) => !line.includes("imds-guard:") && !line.includes("IMDS-GUARD"))
        .join("\n");
      assert.equal(
        withoutOurs,
        pristine,
        `${flavour}: foreign rules unchanged and in order after apply`,
      );
      const output = installed.split("\n").filter((line) => line.startsWith("-A OUTPUT"));
      assert.match(output[0] ?? "", /imds-guard:/, `${flavour}: our jump is first in OUTPUT`);
      await expectVerdict(apache, "ipv4", "refused");
      await uninstall();
      assert.equal(
        await saveRuleset(testbed, flavour),
        pristine,
        `${flavour}: uninstall restores the ruleset exactly`,
      );
      for (const tool of ["iptables", "ip6tables"]) {
        await iptablesIn(testbed, [`${tool}-${flavour}`, "-F"]);
        await iptablesIn(testbed, [`${tool}-${flavour}`, "-X"]);
      }
    }
  });

  void test("uninstall twice is a no-op the second time", async () => {
    await applyPolicy(`allow:\n  users: [${trusty.name}]\n`);
    await uninstall();
    const once = await saveRuleset(testbed);
    const again = await imdsGuard(testbed, ["uninstall"]);
    assert.equal(again.exitCode, 0);
    assert.match(again.stdout, /nothing of ours installed/);
    assert.equal(await saveRuleset(testbed), once);
  });
});

void describe("iptables-legacy", () => {
  before(() => applyPolicy(`allow:\n  users: [${trusty.name}]\n`, "legacy"));
  after(uninstall);

  for (const family of FAMILIES) {
    void test(`the allowed user passes and another is refused (${family})`, async () => {
      await expectVerdict(trusty, family, "200");
      await expectVerdict(apache, family, "refused");
    });
  }

  void test("the rules live in the legacy tables and auto-detection sticks to them", async () => {
    const legacy = await testbed.exec(["iptables-legacy-save"]);
    assert.match(legacy.stdout, /IMDS-GUARD/);
    const nft = await testbed.exec(["iptables-nft-save"]);
    assert.doesNotMatch(nft.stdout, /IMDS-GUARD/);
    const path = await configs.write(
      "auto.yaml",
      `backend: auto\nallow:\n  users: [${trusty.name}]\n`,
    );
    const status = await imdsGuard(testbed, ["status", "--json", "--config", path]);
    assert.equal(status.exitCode, 0, status.stdout + status.stderr);
    assert.equal((JSON.parse(status.stdout) as { backend: string }).backend, "legacy");
  });
});

void describe("plan", () => {
  void test("on a fresh namespace prints the restore script with our chain and owner matches, exits 3 and changes nothing", async () => {
    await uninstall();
    const before = await saveRuleset(testbed);
    const path = await configs.write("config.yaml", `allow:\n  users: [${trusty.name}]\n`);
    const result = await imdsGuard(testbed, ["plan", "--config", path]);
    assert.equal(result.exitCode, 3, result.stdout + result.stderr);
    assert.match(result.stdout, /:IMDS-GUARD - \[0:0\]/);
    assert.match(result.stdout, new RegExp(`-m owner --uid-owner ${trusty.uid} `));
    assert.match(result.stdout, /-I OUTPUT 1 -d 169\.254\.169\.254\/32/);
    assert.match(result.stdout, /-I OUTPUT 1 -d fd00:ec2::254\/128/);
    assert.equal(await saveRuleset(testbed), before);
  });
});

void describe("refusals in the kernel log", () => {
  // LOG from a non-init namespace reaches the kernel log only with this host-wide switch;
  // set it for the test and put back what was there.
  const SWITCH = "/proc/sys/net/netfilter/nf_log_all_netns";
  let previous = "0";
  before(async () => {
    previous = (await readFile(SWITCH, "utf8")).trim();
    await writeFile(SWITCH, "1");
  });
  after(async () => {
    await writeFile(SWITCH, previous);
    await uninstall();
  });

  async function kernelLogSince(uptime: number): Promise<string[]> {
    const result = await execa("dmesg", [], { reject: false });
    return result.stdout.split("\n").filter((line) => {
      const stamp = /^\[\s*(\d+\.\d+)\]/.exec(line);
      return stamp?.[1] !== undefined && Number(stamp[1]) >= uptime;
    });
  }

  async function uptimeNow(): Promise<number> {
    return Number((await readFile("/proc/uptime", "utf8")).split(" ")[0]);
  }

  void test("a refused attempt is logged with the uid that made it, an allowed one is not", async () => {
    await applyPolicy(`allow:\n  users: [${trusty.name}]\nlog_denied: true\n`);
    const since = await uptimeNow();
    await expectVerdict(apache, "ipv4", "refused");
    await expectVerdict(trusty, "ipv4", "200");
    const lines = await until("the LOG line", async () => {
      const found = (await kernelLogSince(since)).filter((line) =>
        line.includes(LOG_PREFIX.enforce.trim()),
      );
      return found.length > 0 ? found : undefined;
    });
    assert.ok(
      lines.some((line) => line.includes(`UID=${apache.uid} `)),
      lines.join("\n"),
    );
    assert.ok(!lines.some((line) => line.includes(`UID=${trusty.uid} `)), lines.join("\n"));
  });

  void test("log_denied: false logs nothing", async () => {
    await applyPolicy(`allow:\n  users: [${trusty.name}]\nlog_denied: false\n`);
    const since = await uptimeNow();
    await expectVerdict(apache, "ipv4", "refused");
    await new Promise((resolve) => setTimeout(resolve, 300));
    const lines = (await kernelLogSince(since)).filter((line) =>
      line.includes(`UID=${apache.uid} `),
    );
    assert.deepEqual(lines, []);
  });
});

void describe("a deny-list whose account NSS no longer knows", () => {
  void test("keeps refusing the uid the kernel already refuses (NSS going away never widens access)", async () => {
    const doomed = await testbed.createUser("doomed");
    await applyPolicy(`deny:\n  users: [${doomed.name}, ${apache.name}]\n`);
    await expectVerdict(bare(doomed), "ipv4", "refused");
    const removed = await execa("userdel", [doomed.name], { reject: false });
    assert.equal(removed.exitCode, 0, removed.stderr);
    const path = await configs.write(
      "config.yaml",
      `backend: nft\ndeny:\n  users: [${doomed.name}, ${apache.name}]\n`,
    );
    const applied = await imdsGuard(testbed, ["apply", "--config", path]);
    assert.equal(applied.exitCode, 0, applied.stderr);
    assert.match(
      applied.stderr,
      new RegExp(`keeping the refusal of uid\\(s\\) \\[${doomed.uid}\\]`),
    );
    for (const family of FAMILIES) {
      // A process that still runs as the deleted account's uid stays refused.
      await expectVerdict(bare(doomed), family, "refused");
      await expectVerdict(apache, family, "refused");
      await expectVerdict(trusty, family, "200");
    }
  });
});
