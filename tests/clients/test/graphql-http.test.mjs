// The GraphQL over HTTP audit of the `graphql-http` reference package against attache,
// with a token (SPEC 5: every operation needs one). A MUST that fails, or a SHOULD that
// only warns, fails the suite unless listed below with the reason SPEC decides it.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { serverAudits } from "graphql-http";

import { graphqlUrl, token } from "./helpers.mjs";

/** Audits SPEC decides otherwise, by the start of their name, with the reason. */
const DECIDED = new Map([
  // None today: every audit passes with the token and the CSRF header a browser
  // client sends. Add `[audit name, reason]` here only where SPEC decides otherwise.
]);

const fetchFn = (input, init = {}) => {
  const headers = new Headers(init.headers);
  headers.set("authorization", `Bearer ${token}`);
  // SPEC 6's CSRF rule: a header only scripts can set, as Apollo Client sends.
  headers.set("apollo-require-preflight", "true");
  return fetch(input, { ...init, headers });
};

describe("graphql-http audit (GraphQL over HTTP)", () => {
  for (const audit of serverAudits({ url: graphqlUrl, fetchFn })) {
    it(audit.name, async () => {
      const result = await audit.fn();
      if (result.status === "ok") return;
      const decided = [...DECIDED.keys()].find((name) => audit.name.startsWith(name));
      if (decided) return;
      const body = result.response ? await result.response.text().catch(() => "") : "";
      assert.fail(`${result.status}: ${result.reason}\n${body.slice(0, 300)}`);
    });
  }
});
