// The config file as an operator writes it: what a valid file turns into, the exact
// `file:line:col: key: message` line for every mistake (all of them at once), the warnings
// that a valid but risky file earns, and that no accepted name can smuggle text into iptables.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import fc from "fast-check";

import type { Config } from "../../src/core/config-model.js";
import { formatProblem, parseConfig } from "../../src/core/config.js";

const FILE = "/etc/imds-guard/config.yaml";
const SHIPPED = new URL("../../config/imds-guard.yaml", import.meta.url);

const DEFAULTS: Config = {
  mode: "enforce",
  policy: "allow",
  principals: { users: ["root"], groups: [] },
  targets: { ipv4: ["169.254.169.254/32"], ipv6: ["fd00:ec2::254/128"] },
  protocols: "all",
  backend: "auto",
  driftCheckIntervalMs: 2000,
  nssRefreshIntervalMs: 60_000,
  listen: { host: "127.0.0.1", port: 9877 },
  listenNonLoopback: false,
  logDenied: true,
};

const USER_RULE =
  'a name starts with a letter or "_", continues with letters, digits, "_", "." or "-", ' +
  'may end in "$", and is at most 32 characters; or give a numeric uid';
const ADDRESS_RULE = "(optionally with /prefix, such as 169.254.169.254 or fd00:ec2::254/128)";

function lines(...text: string[]): string {
  return text.map((l) => `${l}\n`).join("");
}

function parseOk(text: string): { config: Config; warnings: string[] } {
  const result = parseConfig(text, FILE);
  if (!result.ok)
    assert.fail(`expected a valid config, got:\n${result.problems.map(formatProblem).join("\n")}`);
  return result;
}

function problemsOf(text: string): string[] {
  const result = parseConfig(text, FILE);
  if (result.ok)
    assert.fail(`expected problems, got a valid config: ${JSON.stringify(result.config)}`);
  return result.problems.map(formatProblem);
}

void describe("a valid file becomes a normalised Config", () => {
  const cases: { intent: string; text: string; expect: Partial<Config> }[] = [
    {
      intent: "only allow: given, everything else takes its default",
      text: lines("allow: {users: [root]}"),
      expect: DEFAULTS,
    },
    {
      intent: "a deny-list of names",
      text: lines("deny: {users: [apache]}"),
      expect: { policy: "deny", principals: { users: ["apache"], groups: [] } },
    },
    {
      intent: "an allow-list of users and groups in block style",
      text: lines("allow:", "  users: [root, trustworthy-user]", "  groups:", "    - imds-readers"),
      expect: {
        policy: "allow",
        principals: { users: ["root", "trustworthy-user"], groups: ["imds-readers"] },
      },
    },
    {
      intent: "numeric ids, as integers or strings, are kept as canonical decimal strings",
      text: lines('allow: {users: [0, "1001", 4294967294, "007"], groups: [100]}'),
      expect: { principals: { users: ["0", "1001", "4294967294", "7"], groups: ["100"] } },
    },
    {
      intent:
        "names as Debian's --badname allows: upper case, dots, a trailing $ (machine accounts)",
      text: lines("allow: {users: [root, Svc.Web_1, HOST01$, _apt]}"),
      expect: { principals: { users: ["root", "Svc.Web_1", "HOST01$", "_apt"], groups: [] } },
    },
    {
      intent: "a name written twice counts once",
      text: lines("allow: {users: [root, root, 0]}"),
      expect: { principals: { users: ["root", "0"], groups: [] } },
    },
    {
      intent: "an empty allow map is legal and allows nobody",
      text: lines("allow: {}"),
      expect: { policy: "allow", principals: { users: [], groups: [] } },
    },
    {
      intent: "IPv6 targets are compressed, lower-cased, given a prefix, and split by family",
      text: lines(
        "allow: {users: [root]}",
        "targets:",
        "  - FD00:0EC2:0000:0000:0000:0000:0000:0254",
        "  - 169.254.169.254",
        '  - "2001:db8:0:0:1:0:0:1"',
        '  - "2001:db8::/32"',
        '  - "::ffff:169.254.169.254"',
      ),
      expect: {
        targets: {
          ipv4: ["169.254.169.254/32"],
          ipv6: [
            "fd00:ec2::254/128",
            "2001:db8::1:0:0:1/128",
            "2001:db8::/32",
            "::ffff:a9fe:a9fe/128",
          ],
        },
      },
    },
    {
      intent: "the same network written two ways is kept once, in first-seen order",
      text: lines(
        "allow: {users: [root]}",
        'targets: [10.0.0.0/8, 169.254.169.254/32, 169.254.169.254, "fd00:ec2::254", "FD00:EC2:0::254/128"]',
      ),
      expect: {
        targets: { ipv4: ["10.0.0.0/8", "169.254.169.254/32"], ipv6: ["fd00:ec2::254/128"] },
      },
    },
    {
      intent: "IPv4-only targets leave the IPv6 list empty",
      text: lines("allow: {users: [root]}", "targets: [169.254.169.254]"),
      expect: { targets: { ipv4: ["169.254.169.254/32"], ipv6: [] } },
    },
    {
      intent: "every scalar key set to a non-default value",
      text: lines(
        "mode: enforce",
        "deny: {groups: [www-data]}",
        "protocols: tcp",
        "backend: legacy",
        "drift_check_interval: 500ms",
        "nss_refresh_interval: 1h",
        'listen: "[::1]:9100"',
        "log_denied: false",
      ),
      expect: {
        protocols: "tcp",
        backend: "legacy",
        driftCheckIntervalMs: 500,
        nssRefreshIntervalMs: 3_600_000,
        listen: { host: "::1", port: 9100 },
        logDenied: false,
      },
    },
    {
      intent: "duration bounds are inclusive",
      text: lines(
        "allow: {users: [root]}",
        "drift_check_interval: 1h",
        "nss_refresh_interval: 24h",
      ),
      expect: { driftCheckIntervalMs: 3_600_000, nssRefreshIntervalMs: 86_400_000 },
    },
    {
      intent: "localhost and anything in 127.0.0.0/8 count as loopback",
      text: lines("allow: {users: [root]}", "listen: 127.1.2.3:80"),
      expect: { listen: { host: "127.1.2.3", port: 80 }, listenNonLoopback: false },
    },
    {
      intent: "localhost is bound as 127.0.0.1, whatever /etc/hosts says",
      text: lines("allow: {users: [root]}", "listen: localhost:9877"),
      expect: { listen: { host: "127.0.0.1", port: 9877 }, listenNonLoopback: false },
    },
    {
      intent: "a non-loopback address is accepted once listen_non_loopback says so",
      text: lines("allow: {users: [root]}", "listen: 0.0.0.0:9877", "listen_non_loopback: true"),
      expect: { listen: { host: "0.0.0.0", port: 9877 }, listenNonLoopback: true },
    },
    {
      intent: "a %YAML 1.1 directive does not bring back yes/no booleans, and true still works",
      text: lines("%YAML 1.1", "---", "allow: {users: [root]}", "log_denied: true"),
      expect: { logDenied: true },
    },
    {
      intent: "Windows line endings and a byte-order mark are fine",
      text: "\uFEFFallow: {users: [root]}\r\nmode: enforce\r\n",
      expect: { mode: "enforce" },
    },
  ];
  for (const { intent, text, expect } of cases) {
    void it(intent, () => {
      const { config } = parseOk(text);
      const picked = Object.fromEntries(
        Object.keys(expect).map((key) => [key, config[key as keyof Config]]),
      );
      assert.deepEqual(picked, expect);
    });
  }
});

void describe("every problem is reported as file:line:col: key: message", () => {
  const cases: { intent: string; text: string; problems: string[] }[] = [
    {
      intent: "a typo'd key gets a hint",
      text: lines("mode: enforce", "allow: {users: [root]}", "protocol: tcp"),
      problems: [`${FILE}:3:1: protocol: unknown key; did you mean "protocols"?`],
    },
    {
      intent: "hints work for swapped letters, dashes and case, and one level down",
      text: lines("mdoe: audit", "Allow:", "  gruops: [x]", "log-denied: true"),
      problems: [
        `${FILE}:1:1: mdoe: unknown key; did you mean "mode"?`,
        `${FILE}:1:1: missing allow: or deny:; give allow: (only these may reach the metadata service) or deny: (these are refused, everyone else passes)`,
        `${FILE}:2:1: Allow: unknown key; did you mean "allow"?`,
        `${FILE}:4:1: log-denied: unknown key; did you mean "log_denied"?`,
      ],
    },
    {
      intent: "a nested unknown key points at the key, with the hint for its level",
      text: lines("allow:", "  users: [root]", "  gruops: [x]"),
      problems: [`${FILE}:3:3: allow.gruops: unknown key; did you mean "groups"?`],
    },
    {
      intent: "a key nothing like a known one lists what is known",
      text: lines("allow: {users: [root]}", "nope: 1"),
      problems: [
        `${FILE}:2:1: nope: unknown key; expected one of mode, allow, deny, targets, protocols, backend, drift_check_interval, nss_refresh_interval, listen, listen_non_loopback, log_denied`,
      ],
    },
    {
      intent: "both allow and deny: the later key is blamed",
      text: lines("allow: {users: [trustworthy-user]}", "deny: {users: [apache]}"),
      problems: [
        `${FILE}:2:1: deny: give either allow: (only these may reach the metadata service) or deny: (these are refused, everyone else passes), not both`,
      ],
    },
    {
      intent: "neither allow nor deny: the document is blamed",
      text: lines("# a comment first", "mode: enforce"),
      problems: [
        `${FILE}:2:1: missing allow: or deny:; give allow: (only these may reach the metadata service) or deny: (these are refused, everyone else passes)`,
      ],
    },
    {
      intent: "allow: with nothing after it is not silently an empty list",
      text: lines("allow:", "mode: enforce"),
      problems: [
        `${FILE}:1:1: allow: must be a mapping with users: and/or groups: lists, such as {users: [root]} ({} names nobody), got an empty value`,
      ],
    },
    {
      intent: "allow: given a list instead of a mapping",
      text: lines("allow: [root]"),
      problems: [
        `${FILE}:1:8: allow: must be a mapping with users: and/or groups: lists, such as {users: [root]} ({} names nobody), got a list`,
      ],
    },
    {
      intent: "users: given a single name instead of a list",
      text: lines("allow:", "  users: root"),
      problems: [
        `${FILE}:2:10: allow.users: must be a list such as users: [root, 1001], got "root"`,
      ],
    },
    {
      intent:
        "names with a quote, a space, a newline, a leading dash, a shell character, or too long",
      text: lines(
        "deny:",
        "  users:",
        `    - "it's"`,
        "    - trust worthy",
        '    - "a\\nb"',
        "    - -rf",
        '    - "x;reboot"',
        `    - ${"a".repeat(33)}`,
        "  groups: ['\"q\"']",
      ),
      problems: [
        `${FILE}:3:7: deny.users.0: "it's" is not a valid user name: ${USER_RULE}`,
        `${FILE}:4:7: deny.users.1: "trust worthy" is not a valid user name: ${USER_RULE}`,
        `${FILE}:5:7: deny.users.2: "a\\nb" is not a valid user name: ${USER_RULE}`,
        `${FILE}:6:7: deny.users.3: "-rf" is not a valid user name: ${USER_RULE}`,
        `${FILE}:7:7: deny.users.4: "x;reboot" is not a valid user name: ${USER_RULE}`,
        `${FILE}:8:7: deny.users.5: "${"a".repeat(33)}" is not a valid user name: ${USER_RULE}`,
        `${FILE}:9:12: deny.groups.0: "\\"q\\"" is not a valid group name: ${USER_RULE.replace("uid", "gid")}`,
      ],
    },
    {
      intent: "ids out of range and values that are neither name nor id",
      text: lines("allow: {users: [-1, 4294967295, 1.5, true, null]}"),
      problems: [
        `${FILE}:1:17: allow.users.0: uid must be a whole number from 0 to 4294967294, got -1`,
        `${FILE}:1:21: allow.users.1: uid must be a whole number from 0 to 4294967294, got 4294967295`,
        `${FILE}:1:33: allow.users.2: uid must be a whole number from 0 to 4294967294, got 1.5`,
        `${FILE}:1:38: allow.users.3: must be a user name or a numeric uid, got true`,
        `${FILE}:1:44: allow.users.4: must be a user name or a numeric uid, got an empty value`,
      ],
    },
    {
      intent: "control characters in a bad value are escaped in the message, never echoed raw",
      text: lines('allow: {users: ["\\e[31mred\\u2028"]}'),
      problems: [
        `${FILE}:1:17: allow.users.0: "\\u001b[31mred\\u2028" is not a valid user name: ${USER_RULE}`,
      ],
    },
    {
      intent: "durations need a known unit",
      text: lines(
        "allow: {users: [root]}",
        'drift_check_interval: "2"',
        "nss_refresh_interval: 2d",
      ),
      problems: [
        `${FILE}:2:23: drift_check_interval: must be a duration such as "500ms", "2s", "1m" or "1h", got "2"`,
        `${FILE}:3:23: nss_refresh_interval: must be a duration such as "500ms", "2s", "1m" or "1h", got "2d"`,
      ],
    },
    {
      intent: "durations outside their range say the range",
      text: lines(
        "allow: {users: [root]}",
        "drift_check_interval: 50ms",
        "nss_refresh_interval: 25h",
      ),
      problems: [
        `${FILE}:2:23: drift_check_interval: must be between 100ms and 1h, got "50ms"`,
        `${FILE}:3:23: nss_refresh_interval: must be between 1s and 24h, got "25h"`,
      ],
    },
    {
      intent: "bad addresses: not an address, a zone id, a bad prefix, and a catch-all prefix",
      text: lines(
        "allow: {users: [root]}",
        "targets:",
        "  - metadata.google.internal",
        '  - "fe80::1%eth0"',
        "  - 169.254.169.254/33",
        "  - 169.254.169.254/",
        "  - 0.0.0.0/0",
        '  - "::/8"',
        "  - 80",
      ),
      problems: [
        `${FILE}:3:5: targets.0: "metadata.google.internal" is not an IPv4 or IPv6 address ${ADDRESS_RULE}`,
        `${FILE}:4:5: targets.1: "fe80::1%eth0" is not an IPv4 or IPv6 address ${ADDRESS_RULE}`,
        `${FILE}:5:5: targets.2: "169.254.169.254/33": an IPv4 prefix must be /0 to /32`,
        `${FILE}:6:5: targets.3: "169.254.169.254/" has a malformed prefix; write /0 to /32`,
        `${FILE}:7:5: targets.4: "0.0.0.0/0" covers too much: IPv4 targets need a prefix of /8 or longer; a guard over that much traffic is almost certainly a typo`,
        `${FILE}:8:5: targets.5: "::/8" covers too much: IPv6 targets need a prefix of /16 or longer; a guard over that much traffic is almost certainly a typo`,
        `${FILE}:9:5: targets.6: must be an IPv4 or IPv6 address as a string, got 80`,
      ],
    },
    {
      intent: "an empty target list would guard nothing",
      text: lines("allow: {users: [root]}", "targets: []"),
      problems: [`${FILE}:2:10: targets: needs at least one address`],
    },
    {
      intent: "yes/no are strings in YAML 1.2, so they are not booleans",
      text: lines("allow: {users: [root]}", "log_denied: yes", "listen_non_loopback: no"),
      problems: [
        `${FILE}:2:13: log_denied: must be true or false (yes/no/on/off are strings in YAML 1.2), got "yes"`,
        `${FILE}:3:22: listen_non_loopback: must be true or false (yes/no/on/off are strings in YAML 1.2), got "no"`,
      ],
    },
    {
      intent: "enumerations say their choices",
      text: lines("mode: enforcing", "allow: {users: [root]}", "protocols: udp", "backend:"),
      problems: [
        `${FILE}:1:7: mode: must be "enforce" or "audit", got "enforcing"`,
        `${FILE}:3:12: protocols: must be "all" or "tcp", got "udp"`,
        `${FILE}:4:1: backend: must be "auto", "nft" or "legacy", got an empty value`,
      ],
    },
    {
      intent: "a non-loopback listen address needs listen_non_loopback: true",
      text: lines("allow: {users: [root]}", "listen: 0.0.0.0:9877"),
      problems: [
        `${FILE}:2:9: listen: refusing to listen on a non-loopback address; set listen_non_loopback: true if you really mean it`,
      ],
    },
    {
      intent: "the IPv6 unspecified address is not loopback either",
      text: lines("allow: {users: [root]}", 'listen: "[::]:9877"', "listen_non_loopback: false"),
      problems: [
        `${FILE}:2:9: listen: refusing to listen on a non-loopback address; set listen_non_loopback: true if you really mean it`,
      ],
    },
    {
      intent: "a host name is not an IP literal, so it might resolve anywhere",
      text: lines("allow: {users: [root]}", "listen: metadata.local:80"),
      problems: [
        `${FILE}:2:9: listen: must be "host:port" with an IP address or localhost, IPv6 in brackets (127.0.0.1:9877, [::1]:9877), got "metadata.local:80"`,
      ],
    },
    {
      intent: "IPv6 without brackets is ambiguous",
      text: lines("allow: {users: [root]}", "listen: ::1:9877"),
      problems: [
        `${FILE}:2:9: listen: must be "host:port" with an IP address or localhost, IPv6 in brackets (127.0.0.1:9877, [::1]:9877), got "::1:9877"`,
      ],
    },
    {
      intent: "port 0 and ports above 65535 are refused",
      text: lines("allow: {users: [root]}", "listen: localhost:65536"),
      problems: [`${FILE}:2:9: listen: port must be a number from 1 to 65535, got "65536"`],
    },
    {
      intent: "a YAML syntax error keeps its position",
      text: lines("allow:", "  users: [root", "mode: enforce"),
      problems: [
        `${FILE}:3:1: YAML: Flow sequence in block collection must be sufficiently indented and end with a ]`,
      ],
    },
    {
      intent: "a duplicated key is a YAML error at the second one",
      text: lines("allow: {users: [root]}", "mode: audit", "mode: enforce"),
      problems: [`${FILE}:3:1: YAML: Map keys must be unique`],
    },
    {
      intent: "YAML 1.1 tags such as !!set are not quietly turned into something else",
      text: lines("allow: !!set {root}"),
      problems: [`${FILE}:1:8: YAML: Unresolved tag: tag:yaml.org,2002:set`],
    },
    {
      intent: "an alias to an anchor that does not exist",
      text: lines("allow: {users: *admins}"),
      problems: [`${FILE}:1:16: YAML: unknown alias *admins`],
    },
    {
      intent: "an empty file",
      text: "",
      problems: [`${FILE}:1:1: the file is empty; it needs at least allow: or deny:`],
    },
    {
      intent: "a file of comments only is empty too",
      text: lines("# allow:", "#   users: [root]"),
      problems: [`${FILE}:1:1: the file is empty; it needs at least allow: or deny:`],
    },
    {
      intent: "a top level that is a list, not a mapping",
      text: lines("", "- allow"),
      problems: [
        `${FILE}:2:1: the top level must be a mapping of keys such as mode:, allow: and targets:`,
      ],
    },
    {
      intent: "many mistakes are all reported at once, in file order",
      text: lines(
        "mode: enforcing",
        "allow:",
        "  users: [root, 'bad name']",
        "deny: {users: [apache]}",
        "drift_check_interval: 2",
        "listen: 10.0.0.1:9877",
        "log_denied: yes",
        "protocol: tcp",
      ),
      problems: [
        `${FILE}:1:7: mode: must be "enforce" or "audit", got "enforcing"`,
        `${FILE}:3:17: allow.users.1: "bad name" is not a valid user name: ${USER_RULE}`,
        `${FILE}:4:1: deny: give either allow: (only these may reach the metadata service) or deny: (these are refused, everyone else passes), not both`,
        `${FILE}:5:23: drift_check_interval: must be a duration such as "500ms", "2s", "1m" or "1h", got 2`,
        `${FILE}:6:9: listen: refusing to listen on a non-loopback address; set listen_non_loopback: true if you really mean it`,
        `${FILE}:7:13: log_denied: must be true or false (yes/no/on/off are strings in YAML 1.2), got "yes"`,
        `${FILE}:8:1: protocol: unknown key; did you mean "protocols"?`,
      ],
    },
  ];
  for (const { intent, text, problems } of cases) {
    void it(intent, () => {
      assert.deepEqual(problemsOf(text), problems);
    });
  }

  void it("a problem with no key path leaves the key out of the line", () => {
    const line = formatProblem({ file: "c.yaml", line: 4, col: 2, path: "", message: "oops" });
    assert.equal(line, "c.yaml:4:2: oops");
  });
});

void describe("a valid but risky file is accepted with warnings", () => {
  const cases: { intent: string; text: string; warnings: string[] }[] = [
    {
      intent: "an allow-list naming root and others is quiet",
      text: lines("allow: {users: [root, trustworthy-user]}"),
      warnings: [],
    },
    {
      intent: "uid 0 counts as naming root",
      text: lines("allow: {users: [0]}"),
      warnings: [],
    },
    {
      intent: "group root counts as naming root, since root's processes run with gid 0",
      text: lines("allow: {groups: [root], users: [trustworthy-user]}"),
      warnings: [],
    },
    {
      intent: "an allow-list without root may cut off cloud-init",
      text: lines("mode: enforce", "allow:", "  users: [trustworthy-user]"),
      warnings: [
        `${FILE}:2:1: allow: allow-list does not name root (user "root" or 0): cloud-init and platform agents running as root may lose metadata access`,
      ],
    },
    {
      intent: "an allow-list naming nobody in enforce mode refuses everyone, loudly",
      text: lines("allow: {}"),
      warnings: [
        `${FILE}:1:1: allow: ALLOW-LIST NAMES NOBODY: every process, including cloud-init and platform agents running as root, will be refused the metadata service`,
      ],
    },
    {
      intent: "a deny-list naming root refuses cloud-init",
      text: lines("deny: {users: [apache, root]}"),
      warnings: [
        `${FILE}:1:1: deny: deny-list names root: cloud-init and platform agents running as root will be refused the metadata service`,
      ],
    },
    {
      intent: "a deny-list naming nobody guards nothing",
      text: lines("deny: {users: []}"),
      warnings: [
        `${FILE}:1:1: deny: deny-list names nobody: every process can reach the metadata service`,
      ],
    },
    {
      intent: "audit mode refuses nothing, which is worth saying",
      text: lines("mode: audit", "allow: {users: [root]}"),
      warnings: [
        `${FILE}:1:7: mode: audit mode: nothing is refused; connections the policy would refuse are only logged and counted`,
      ],
    },
    {
      intent: "host bits beyond the prefix are cleared, and the operator is told",
      text: lines("allow: {users: [root]}", "targets: [169.254.169.254/16]"),
      warnings: [
        `${FILE}:2:11: targets.0: address has bits set beyond its prefix; using 169.254.0.0/16`,
      ],
    },
  ];
  for (const { intent, text, warnings } of cases) {
    void it(intent, () => {
      assert.deepEqual(parseOk(text).warnings, warnings);
    });
  }
});

void describe("the shipped example config", () => {
  void it("parses with no problems and no warnings", () => {
    const { config, warnings } = parseOk(readFileSync(SHIPPED, "utf8"));
    assert.deepEqual(warnings, []);
    assert.deepEqual(config, {
      ...DEFAULTS,
      principals: { users: ["root", "trustworthy-user"], groups: ["imds-readers"] },
    });
  });
});

void describe("no accepted user or group name can carry text into an iptables-restore script", () => {
  const SAFE = /^[A-Za-z0-9_.$-]+$/;
  // Mostly arbitrary text, plus strings built to sit right at the edge of the name rule.
  const candidate = fc.oneof(
    fc.string({ unit: "binary", maxLength: 40 }),
    fc.string({ unit: fc.constantFrom(..."aZ_09.-$ '\"\n\t;#\\`".split("")), maxLength: 40 }),
    fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_.-]{0,33}\$?$/),
  );

  for (const kind of ["users", "groups"] as const) {
    void it(`for ${kind}`, () => {
      fc.assert(
        fc.property(candidate, (name) => {
          const result = parseConfig(`allow: {${kind}: [${JSON.stringify(name)}]}\n`, FILE);
          if (!result.ok) return;
          for (const accepted of result.config.principals[kind]) {
            assert.match(accepted, SAFE);
            assert.doesNotMatch(accepted, /[\s'"]/);
            assert.ok(!accepted.startsWith("-"), accepted);
            assert.ok(accepted.length <= 32, accepted);
          }
        }),
        { numRuns: 1000 },
      );
    });
  }
});
