// apollo-upload-client (current major) against a real attache server: a real file sent
// as a GraphQL multipart request to uploadAttachmentFile, and the CSRF rule of SPEC 6.
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

import { ApolloClient, CombinedGraphQLErrors, InMemoryCache, gql } from "@apollo/client";
import UploadHttpLink from "apollo-upload-client/UploadHttpLink.mjs";

import { download, graphqlUrl, ownerId, pdf, refusedWithStatus, sha256, token } from "./helpers.mjs";

const UPLOAD_FILE = gql`
  mutation UploadFile($input: UploadAttachmentFileInput!) {
    uploadAttachmentFile(input: $input) { id ownerType ownerId filename contentType byteSize sha256 url downloadUrl }
  }
`;

/** An Apollo Client sending multipart requests, with the preflight header Apollo's docs prescribe. */
function uploadClient(headers = { "Apollo-Require-Preflight": "true" }) {
  return new ApolloClient({
    link: new UploadHttpLink({ uri: graphqlUrl, headers: { Authorization: `Bearer ${token}`, ...headers } }),
    cache: new InMemoryCache(),
  });
}

describe("apollo-upload-client: uploadAttachmentFile", () => {
  let dir;
  let path;
  let bytes;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "attache-clients-"));
    path = join(dir, "Purchase order 42.pdf");
    await writeFile(path, pdf("Purchase order 42: 12 bolts, 3 nuts"));
    bytes = await readFile(path);
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it("stores a real file from disk; url and downloadUrl give back the same bytes and sha256", async () => {
    const file = new File([await readFile(path)], "Purchase order 42.pdf", { type: "application/pdf" });
    const owner = ownerId("multipart");
    const { data } = await uploadClient().mutate({
      mutation: UPLOAD_FILE,
      variables: { input: { ownerType: "contract", ownerId: owner, file, sha256: sha256(bytes) } },
    });
    const stored = data.uploadAttachmentFile;
    assert.equal(stored.filename, "Purchase order 42.pdf");
    assert.equal(stored.contentType, "application/pdf");
    assert.equal(stored.byteSize, bytes.length);
    assert.equal(stored.sha256, sha256(bytes));
    assert.equal(stored.ownerId, owner);

    const opened = await download(stored.url);
    assert.equal(opened.status, 200);
    assert.deepEqual(opened.bytes, bytes);
    assert.equal(sha256(opened.bytes), stored.sha256);

    const bearer = await download(stored.downloadUrl, { Authorization: `Bearer ${token}` });
    assert.equal(bearer.status, 200);
    assert.equal(sha256(bearer.bytes), sha256(bytes));
  });

  it("a wrong sha256 over multipart is CHECKSUM_MISMATCH", async () => {
    const file = new File([bytes], "scan.pdf", { type: "application/pdf" });
    const error = await uploadClient()
      .mutate({
        mutation: UPLOAD_FILE,
        variables: { input: { ownerType: "contract", ownerId: ownerId("multipart"), file, sha256: "f".repeat(64) } },
      })
      .then(() => assert.fail("expected a refusal"), (e) => e);
    assert.ok(CombinedGraphQLErrors.is(error), String(error));
    assert.equal(error.errors[0].extensions.code, "CHECKSUM_MISMATCH");
  });

  it("a PDF sent as image/png to invoice_logo is UNSUPPORTED_MEDIA_TYPE", async () => {
    const file = new File([bytes], "logo.png", { type: "image/png" });
    const error = await uploadClient()
      .mutate({ mutation: UPLOAD_FILE, variables: { input: { ownerType: "invoice_logo", file } } })
      .then(() => assert.fail("expected a refusal"), (e) => e);
    assert.ok(CombinedGraphQLErrors.is(error), String(error));
    assert.equal(error.errors[0].extensions.code, "UNSUPPORTED_MEDIA_TYPE");
  });
});

describe("CSRF prevention (SPEC 6)", () => {
  it("a multipart request without apollo-require-preflight is refused with HTTP 400", async () => {
    const file = new File([pdf("csrf")], "csrf.pdf", { type: "application/pdf" });
    const owner = ownerId("csrf");
    const error = await refusedWithStatus(
      uploadClient({}).mutate({ mutation: UPLOAD_FILE, variables: { input: { ownerType: "contract", ownerId: owner, file } } }),
    );
    // HTTP 400 in GraphQL's media type: the code and the header to send reach the app.
    assert.ok(CombinedGraphQLErrors.is(error), `expected CombinedGraphQLErrors, got ${error?.name}: ${error}`);
    assert.equal(error.errors[0].extensions.code, "BAD_USER_INPUT");
    assert.match(error.errors[0].message, /apollo-require-preflight/);
  });

  it("a plain multipart form post (what a cross-site <form> can send) is refused with HTTP 400", async () => {
    const form = new FormData();
    form.append(
      "operations",
      JSON.stringify({
        query: "mutation($file: Upload!) { uploadAttachmentFile(input: {ownerType: \"contract\", ownerId: \"csrf\", file: $file}) { id } }",
        variables: { file: null },
      }),
    );
    form.append("map", JSON.stringify({ 1: ["variables.file"] }));
    form.append("1", new Blob([pdf("csrf")], { type: "application/pdf" }), "csrf.pdf");
    const response = await refusedWithStatus(
      fetch(graphqlUrl, { method: "POST", headers: { Authorization: `Bearer ${token}` }, body: form }),
    );
    assert.equal(response.status, 400);
    assert.match(await response.text(), /CSRF|apollo-require-preflight/);

    const accepted = await fetch(graphqlUrl, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "apollo-require-preflight": "true" },
      body: form,
    });
    assert.equal(accepted.status, 200);
    const body = await accepted.json();
    assert.equal(body.errors, undefined, JSON.stringify(body.errors));
    assert.ok(body.data.uploadAttachmentFile.id);
  });

  it("x-apollo-operation-name is accepted in place of apollo-require-preflight", async () => {
    const file = new File([pdf("op name")], "op.pdf", { type: "application/pdf" });
    const { data } = await uploadClient({ "x-apollo-operation-name": "UploadFile" }).mutate({
      mutation: UPLOAD_FILE,
      variables: { input: { ownerType: "contract", ownerId: ownerId("csrf"), file } },
    });
    assert.equal(data.uploadAttachmentFile.filename, "op.pdf");
  });

  it("a GET query without the header is refused; with it, it runs", async () => {
    const url = `${graphqlUrl}?query=${encodeURIComponent("{ attachments(ownerType: \"contract\", first: 1) { totalCount } }")}`;
    const auth = { Authorization: `Bearer ${token}`, Accept: "application/json" };
    assert.equal((await fetch(url, { headers: auth })).status, 400);
    const ok = await fetch(url, { headers: { ...auth, "apollo-require-preflight": "true" } });
    assert.equal(ok.status, 200);
    assert.equal(typeof (await ok.json()).data.attachments.totalCount, "number");
  });
});
