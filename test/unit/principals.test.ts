// Which uids and gids the kernel matches for the users and groups an operator names, given
// what NSS (getent passwd / getent group) says. The rule that matters most: a name NSS does not
// know never widens access; it contributes no id and is reported.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import type { Policy, PrincipalSpec } from "../../src/core/config-model.js";
import { parseGroup, parsePasswd, type NssSnapshot } from "../../src/core/nss.js";
import {
  describeUnresolved,
  resolvePrincipals,
  type ResolvedPrincipal,
} from "../../src/core/principals.js";

const fixture = (name: string): string =>
  readFileSync(new URL(`../fixtures/${name}`, import.meta.url), "utf8");

const snapshot: NssSnapshot = {
  passwd: parsePasswd(fixture("passwd")),
  groups: parseGroup(fixture("group")),
};

void describe("getent output is parsed, malformed lines skipped", () => {
  void test("passwd: name, uid and primary gid of every well-formed line, in file order", () => {
    assert.deepEqual(snapshot.passwd, [
      { name: "root", uid: 0, gid: 0 },
      { name: "daemon", uid: 1, gid: 1 },
      { name: "apache", uid: 48, gid: 48 },
      { name: "svc-agent", uid: 998, gid: 2000 },
      { name: "alice", uid: 1000, gid: 1000 },
      { name: "bob", uid: 1001, gid: 1001 },
      { name: "carol", uid: 1002, gid: 2000 },
      { name: "dave", uid: 1003, gid: 1003 },
    ]);
  });

  void test("group: name, gid and explicit members of every well-formed line, in file order", () => {
    assert.deepEqual(snapshot.groups, [
      { name: "root", gid: 0, members: [] },
      { name: "daemon", gid: 1, members: [] },
      { name: "apache", gid: 48, members: [] },
      { name: "alice", gid: 1000, members: [] },
      { name: "bob", gid: 1001, members: [] },
      { name: "imds", gid: 2000, members: ["alice", "ghost"] },
      { name: "ops", gid: 2001, members: ["bob", "dave", "bob"] },
      { name: "empty", gid: 2002, members: [] },
    ]);
  });

  const passwdLines: readonly { intent: string; line: string }[] = [
    { intent: "a line without fields (getent never prints comments)", line: "# managed by puppet" },
    { intent: "too few fields", line: "short:x:1004:1004" },
    { intent: "a non-numeric uid", line: "baduid:x:abc:100::/:/bin/sh" },
    { intent: "a negative uid", line: "negative:x:-7:100::/:/bin/sh" },
    { intent: "an empty name", line: ":x:1005:1005::/:/bin/sh" },
    {
      intent: "uid 4294967295, which is (uid_t)-1 and matches nobody",
      line: "minus1:x:4294967295:100::/:/bin/sh",
    },
    { intent: "a uid beyond 32 bits", line: "toolarge:x:4294967296:100::/:/bin/sh" },
    { intent: "an empty gid", line: "nogid:x:1006:::/:/bin/sh" },
    { intent: "a uid with a sign", line: "plus:x:+5:100::/:/bin/sh" },
    { intent: "a uid in exponent notation", line: "exp:x:1e3:100::/:/bin/sh" },
  ];
  for (const { intent, line } of passwdLines) {
    void test(`passwd skips ${intent}`, () => {
      assert.deepEqual(parsePasswd(`${line}\nok:x:7:7::/:/bin/sh\n`), [
        { name: "ok", uid: 7, gid: 7 },
      ]);
    });
  }

  const groupLines: readonly { intent: string; line: string }[] = [
    { intent: "a line without fields", line: "# managed by puppet" },
    { intent: "a missing members field", line: "nomembersfield:x:2003" },
    { intent: "a non-numeric gid", line: "badgid:x:two:alice" },
    { intent: "an empty name", line: ":x:2004:alice" },
    { intent: "a gid beyond 32 bits", line: "toolarge:x:4294967296:alice" },
  ];
  for (const { intent, line } of groupLines) {
    void test(`group skips ${intent}`, () => {
      assert.deepEqual(parseGroup(`${line}\nok:x:7:a\n`), [{ name: "ok", gid: 7, members: ["a"] }]);
    });
  }

  void test("group members: empty items between commas are dropped", () => {
    assert.deepEqual(parseGroup("g:x:5:,a,,b,\n"), [{ name: "g", gid: 5, members: ["a", "b"] }]);
  });

  void test("empty getent output is an empty list", () => {
    assert.deepEqual(parsePasswd(""), []);
    assert.deepEqual(parseGroup("\n"), []);
  });
});

interface ResolveCase {
  readonly intent: string;
  readonly policy?: Policy;
  readonly spec: PrincipalSpec;
  readonly uids: readonly number[];
  readonly gids: readonly number[];
  /** [spec, state, uid or gid] of every entry, users first, in config order. */
  readonly entries: readonly [string, ResolvedPrincipal["state"], number | undefined][];
  readonly unresolved?: readonly string[];
}

const cases: readonly ResolveCase[] = [
  {
    intent: "a user by name resolves to its uid",
    spec: { users: ["alice"], groups: [] },
    uids: [1000],
    gids: [],
    entries: [["alice", "resolved", 1000]],
  },
  {
    intent: "a user by numeric id that has an account resolves to that account",
    spec: { users: ["1001"], groups: [] },
    uids: [1001],
    gids: [],
    entries: [["1001", "resolved", 1001]],
  },
  {
    intent: "a numeric uid with no account is kept (state numeric) and still matched",
    spec: { users: ["5000"], groups: [] },
    uids: [5000],
    gids: [],
    entries: [["5000", "numeric", 5000]],
  },
  {
    intent: "an unknown name is unresolved and contributes no uid (an allow-list stays closed)",
    spec: { users: ["mallory"], groups: [] },
    uids: [],
    gids: [],
    entries: [["mallory", "unresolved", undefined]],
    unresolved: ["mallory"],
  },
  {
    intent: "a group brings its gid, its explicit members and the users whose primary group it is",
    spec: { users: [], groups: ["imds"] },
    uids: [998, 1000, 1002],
    gids: [2000],
    entries: [["imds", "resolved", 2000]],
  },
  {
    intent: "a group by numeric id that has an entry resolves to that entry and its members",
    spec: { users: [], groups: ["2001"] },
    uids: [1001, 1003],
    gids: [2001],
    entries: [["2001", "resolved", 2001]],
  },
  {
    intent: "a numeric gid with no entry is kept (state numeric) with no members",
    spec: { users: [], groups: ["3000"] },
    uids: [],
    gids: [3000],
    entries: [["3000", "numeric", 3000]],
  },
  {
    intent: "an unknown group name is unresolved and contributes neither gid nor uid",
    spec: { users: [], groups: ["nogroup"] },
    uids: [],
    gids: [],
    entries: [["nogroup", "unresolved", undefined]],
    unresolved: ["nogroup"],
  },
  {
    intent: "the same people named several ways give each uid and gid once, sorted ascending",
    spec: {
      users: ["1003", "alice", "1000", "dave", "bob"],
      groups: ["ops", "imds", "2000", "empty"],
    },
    uids: [998, 1000, 1001, 1002, 1003],
    gids: [2000, 2001, 2002],
    entries: [
      ["1003", "resolved", 1003],
      ["alice", "resolved", 1000],
      ["1000", "resolved", 1000],
      ["dave", "resolved", 1003],
      ["bob", "resolved", 1001],
      ["ops", "resolved", 2001],
      ["imds", "resolved", 2000],
      ["2000", "resolved", 2000],
      ["empty", "resolved", 2002],
    ],
  },
  {
    intent: "a deny-list resolves the same way and reports the unknown names it cannot refuse",
    policy: "deny",
    spec: { users: ["apache", "nginx"], groups: ["www-data"] },
    uids: [48],
    gids: [],
    entries: [
      ["apache", "resolved", 48],
      ["nginx", "unresolved", undefined],
      ["www-data", "unresolved", undefined],
    ],
    unresolved: ["nginx", "www-data"],
  },
  {
    intent: "an empty spec gives no ids",
    spec: { users: [], groups: [] },
    uids: [],
    gids: [],
    entries: [],
  },
];

void describe("users and groups resolve to the ids the kernel matches", () => {
  for (const c of cases) {
    void test(c.intent, () => {
      const policy = c.policy ?? "allow";
      const principals = resolvePrincipals(policy, c.spec, snapshot);
      assert.equal(principals.policy, policy);
      assert.deepEqual(principals.uids, c.uids);
      assert.deepEqual(principals.gids, c.gids);
      assert.deepEqual(
        principals.entries.map((entry) => [
          entry.spec,
          entry.state,
          entry.kind === "user" ? entry.uid : entry.gid,
        ]),
        c.entries,
      );
      assert.deepEqual(
        principals.unresolved.map((entry) => entry.spec),
        c.unresolved ?? [],
      );
    });
  }

  void test("group members are listed once each, by uid, with their names; unknown member names are dropped", () => {
    const principals = resolvePrincipals("allow", { users: [], groups: ["imds", "ops"] }, snapshot);
    const members = principals.entries.map((entry) =>
      entry.kind === "group" ? entry.members : [],
    );
    assert.deepEqual(members, [
      [
        { name: "svc-agent", uid: 998 },
        { name: "alice", uid: 1000 },
        { name: "carol", uid: 1002 },
      ],
      [
        { name: "bob", uid: 1001 },
        { name: "dave", uid: 1003 },
      ],
    ]);
  });

  void test("a resolved entry carries the account name NSS knows, not the numeric spec", () => {
    const [user, group] = resolvePrincipals(
      "allow",
      { users: ["1000"], groups: ["2001"] },
      snapshot,
    ).entries;
    assert.equal(user?.name, "alice");
    assert.equal(group?.name, "ops");
  });

  void test("an unresolved name is explained differently for allow- and deny-lists", () => {
    const [mallory] = resolvePrincipals(
      "allow",
      { users: ["mallory"], groups: [] },
      snapshot,
    ).unresolved;
    assert.ok(mallory);
    assert.match(describeUnresolved("allow", mallory), /user "mallory".*allows nobody/);
    assert.match(
      describeUnresolved("deny", mallory),
      /user "mallory".*cannot be refused.*numeric id/,
    );
  });
});
