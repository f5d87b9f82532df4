// The harness itself, with no imds-guard involved: connectivity with no rules, the probe's
// verdicts under hand-written rules inside the instance namespace, and a cleanup that leaves
// nothing behind. Needs root; every rule here is written inside a throwaway namespace.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { execa } from "execa";
import {
  HTTP_PORTS,
  createTestbed,
  isAlive,
  withTestbed,
  type Family,
  type Testbed,
  type TestGroup,
  type TestUser,
} from "./harness/index.js";

const FAMILIES: readonly Family[] = ["ipv4", "ipv6"];

async function hostOutput(argv: readonly string[]): Promise<string> {
  const [file, ...args] = argv;
  assert.ok(file !== undefined);
  const result = await execa(file, args, { reject: false });
  return `${result.stdout}${result.stderr}`;
}

async function mustExec(testbed: Testbed, argv: readonly string[]): Promise<void> {
  const result = await testbed.exec(argv);
  assert.equal(result.exitCode, 0, `${argv.join(" ")}: ${result.stderr}`);
}

void describe("testbed with no rules", () => {
  let testbed: Testbed;
  let imds: TestGroup;
  let trusty: TestUser;

  before(async () => {
    testbed = await createTestbed();
    imds = await testbed.createGroup("imds");
    trusty = await testbed.createUser("trusty", { groups: [imds.name] });
  });
  after(() => testbed.cleanup());

  void test("names carry the run prefix and fit useradd's limit", () => {
    assert.match(testbed.prefix, /^imdsg-[0-9a-f]{6}$/);
    assert.equal(testbed.instanceNs, `${testbed.prefix}-inst`);
    assert.equal(testbed.metadataNs, `${testbed.prefix}-meta`);
    for (const name of [trusty.name, imds.name]) {
      assert.match(name, /^imdsg[0-9a-f]{6}-/);
      assert.ok(name.length <= 32);
    }
  });

  void test("commands run with exactly the requested identity", async () => {
    const id = await testbed.exec(["id", "-u"], { user: trusty });
    assert.equal(id.stdout.trim(), String(trusty.uid));
    const groups = await testbed.exec(["id", "-G"], { user: trusty });
    assert.deepEqual(groups.stdout.trim().split(" ").map(Number).sort(), [...trusty.groups].sort());
    assert.ok(trusty.groups.includes(imds.gid), "supplementary group was applied");
  });

  for (const family of FAMILIES) {
    for (const port of HTTP_PORTS) {
      void test(`a created user gets 200 over ${family} on port ${port}`, async () => {
        const outcome = await testbed.connect({ user: trusty, family, port });
        assert.equal(outcome.result, "200", JSON.stringify(outcome));
        assert.equal(outcome.servedBy, `${testbed.targets[family]}:${port}`);
      });
    }

    void test(`the UDP echo answers over ${family}`, async () => {
      const outcome = await testbed.connect({ user: trusty, family, protocol: "udp" });
      assert.equal(outcome.result, "200", JSON.stringify(outcome));
    });

    void test(`the other address answers over ${family}, from itself`, async () => {
      const host = testbed.other[family];
      const outcome = await testbed.connect({ user: trusty, family, host });
      assert.equal(outcome.result, "200", JSON.stringify(outcome));
      assert.equal(outcome.servedBy, `${host}:80`);
    });
  }

  void test("a port nobody listens on is refused by the server's kernel, not timed out", async () => {
    const tcp = await testbed.connect({ user: trusty, family: "ipv4", port: 81 });
    assert.equal(tcp.result, "refused", JSON.stringify(tcp));
    const udp = await testbed.connect({ user: trusty, family: "ipv6", protocol: "udp", port: 9 });
    assert.equal(udp.result, "refused", JSON.stringify(udp));
  });

  void test("a held connection answers repeatedly on one socket", async () => {
    const held = await testbed.holdConnection({ user: trusty, family: "ipv6" });
    try {
      assert.equal(held.first.result, "200", JSON.stringify(held.first));
      for (let i = 0; i < 3; i += 1) assert.equal((await held.next()).result, "200");
    } finally {
      await held.close();
    }
  });

  void test("the prober counts every attempt", async () => {
    const prober = await testbed.startProber({ user: trusty, family: "ipv4" });
    await new Promise((resolve) => setTimeout(resolve, 400));
    const counts = await prober.stop();
    assert.deepEqual(
      { ...counts, 200: counts[200] > 5 },
      { 200: true, refused: 0, timeout: 0, error: 0 },
      `${JSON.stringify(counts)} ${prober.details().join("; ")}`,
    );
  });

  void test("a TCP REJECT in the instance namespace is refused at once, also on a held socket", async () => {
    const held = await testbed.holdConnection({ user: trusty, family: "ipv4" });
    const rule = ["OUTPUT", "-d", testbed.targets.ipv4, "-p", "tcp", "-j", "REJECT"];
    await mustExec(testbed, ["iptables-nft", "-I", ...rule, "--reject-with", "tcp-reset"]);
    try {
      assert.equal(held.first.result, "200");
      const cut = await held.next();
      assert.equal(cut.result, "refused", JSON.stringify(cut));
      const fresh = await testbed.connect({ user: trusty, family: "ipv4" });
      assert.equal(fresh.result, "refused", JSON.stringify(fresh));
      assert.ok(fresh.ms < 500, `refusal took ${fresh.ms} ms`);
      const other = await testbed.connect({
        user: trusty,
        family: "ipv4",
        host: testbed.other.ipv4,
      });
      assert.equal(other.result, "200", "unrelated address untouched");
    } finally {
      await held.close();
      await mustExec(testbed, ["iptables-nft", "-D", ...rule, "--reject-with", "tcp-reset"]);
    }
    assert.equal((await testbed.connect({ user: trusty, family: "ipv4" })).result, "200");
  });

  void test("an ip6tables UDP REJECT (port unreachable) is refused", async () => {
    const rule = ["OUTPUT", "-d", testbed.targets.ipv6, "-p", "udp", "-j", "REJECT"];
    await mustExec(testbed, ["ip6tables-nft", "-I", ...rule]);
    try {
      const outcome = await testbed.connect({ user: trusty, family: "ipv6", protocol: "udp" });
      assert.equal(outcome.result, "refused", JSON.stringify(outcome));
      assert.ok(outcome.ms < 500, `refusal took ${outcome.ms} ms`);
      const v4 = await testbed.connect({ user: trusty, family: "ipv4", protocol: "udp" });
      assert.equal(v4.result, "200", "IPv4 untouched by an ip6tables rule");
    } finally {
      await mustExec(testbed, ["ip6tables-nft", "-D", ...rule]);
    }
  });

  void test("the host namespace's firewall was never touched", async () => {
    const dumps = await Promise.all(
      [
        ["iptables-save"],
        ["ip6tables-save"],
        ["iptables-legacy-save"],
        ["ip6tables-legacy-save"],
        ["nft", "list", "ruleset"],
      ].map(hostOutput),
    );
    for (const dump of dumps) {
      for (const needle of ["imdsg", testbed.targets.ipv4, testbed.targets.ipv6]) {
        assert.ok(!dump.includes(needle), `host ruleset mentions ${needle}:\n${dump}`);
      }
    }
  });
});

void describe("testbed cleanup", () => {
  void test("removes namespaces, principals, processes and the temp dir, idempotently", async () => {
    const testbed = await createTestbed();
    const group = await testbed.createGroup("grp");
    const user = await testbed.createUser("usr", { primaryGroup: group.name });
    assert.equal(user.gid, group.gid);
    const held = await testbed.holdConnection({ user, family: "ipv4" });
    assert.equal(held.first.result, "200");
    const prober = await testbed.startProber({ user, family: "ipv6" });
    const sleeper = await testbed.spawnInInstance(["sleep", "600"], { user });
    const pids = [testbed.serverPid, sleeper.pid, held.pid, prober.pid];
    for (const pid of pids) assert.ok(isAlive(pid));

    await testbed.cleanup();
    await testbed.cleanup();

    const namespaces = await hostOutput(["ip", "netns", "list"]);
    assert.ok(!namespaces.includes(testbed.prefix), namespaces);
    assert.equal((await execa("getent", ["passwd", user.name], { reject: false })).exitCode, 2);
    assert.equal((await execa("getent", ["group", group.name], { reject: false })).exitCode, 2);
    for (const pid of pids) assert.ok(!isAlive(pid), `pid ${pid} survived cleanup`);
    assert.ok(!existsSync(testbed.scriptDir));
  });

  void test("withTestbed cleans up when the test body throws", async () => {
    let prefix = "";
    await assert.rejects(
      withTestbed(async (testbed) => {
        prefix = testbed.prefix;
        await testbed.createUser("doomed");
        throw new Error("test body failed");
      }),
      /test body failed/,
    );
    assert.notEqual(prefix, "");
    assert.ok(!(await hostOutput(["ip", "netns", "list"])).includes(prefix));
    const passwd = await hostOutput(["getent", "passwd"]);
    assert.ok(!passwd.includes(prefix.replace("-", "")), "user removed");
  });
});
