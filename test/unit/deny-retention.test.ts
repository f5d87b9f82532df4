// A deny-list never shrinks because NSS stopped answering: while a denied name is unresolved,
// the ids the kernel already refuses stay refused.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { deniedIdsIn, parseIptablesSave } from "../../src/core/iptables-save.js";
import { resolvePrincipals, retainDenials } from "../../src/core/principals.js";
import { CHAIN, REFUSE_CHAIN, renderFamily } from "../../src/core/ruleset.js";
import { makeConfig } from "./helpers/config.js";
import { toSaveText } from "./helpers/save-text.js";

const snapshot = {
  passwd: [{ name: "apache", uid: 48, gid: 48 }],
  groups: [{ name: "web", gid: 700, members: ["apache"] }],
};

void describe("reading the denied ids back from the kernel", () => {
  void test("finds every uid and gid our deny rules send to the refusal chain", () => {
    const config = makeConfig({
      policy: "deny",
      principals: { users: ["apache", "1234"], groups: ["web"] },
    });
    const principals = resolvePrincipals("deny", config.principals, snapshot);
    const save = toSaveText(renderFamily("ipv4", config, principals));
    assert.deepEqual(deniedIdsIn(parseIptablesSave(save), CHAIN, REFUSE_CHAIN), {
      uids: [48, 1234],
      gids: [700],
    });
  });

  void test("an allow-list's RETURN rules are not denials", () => {
    const config = makeConfig({ policy: "allow", principals: { users: ["apache"], groups: [] } });
    const principals = resolvePrincipals("allow", config.principals, snapshot);
    const save = toSaveText(renderFamily("ipv4", config, principals));
    assert.deepEqual(deniedIdsIn(parseIptablesSave(save), CHAIN, REFUSE_CHAIN), {
      uids: [],
      gids: [],
    });
  });
});

void describe("retaining denials", () => {
  const held = { uids: [48, 48, 1234], gids: [700] };

  void test("an unresolved denied name keeps what the kernel refuses, once each", () => {
    const principals = resolvePrincipals(
      "deny",
      { users: ["apache", "ghost"], groups: [] },
      { passwd: [], groups: [] },
    );
    const { principals: kept, retained } = retainDenials(principals, held);
    assert.deepEqual(kept.uids, [48, 1234]);
    assert.deepEqual(kept.gids, [700]);
    assert.deepEqual(retained, { uids: [48, 1234], gids: [700] });
  });

  void test("with every name resolved, a removed denial really goes (the operator's edit)", () => {
    const principals = resolvePrincipals("deny", { users: ["apache"], groups: [] }, snapshot);
    const { principals: kept } = retainDenials(principals, held);
    assert.deepEqual(kept.uids, [48]);
    assert.deepEqual(kept.gids, []);
  });

  void test("an allow-list never retains anything (unresolved there only narrows access)", () => {
    const principals = resolvePrincipals(
      "allow",
      { users: ["ghost"], groups: [] },
      { passwd: [], groups: [] },
    );
    const { principals: kept } = retainDenials(principals, held);
    assert.deepEqual(kept.uids, []);
  });
});
