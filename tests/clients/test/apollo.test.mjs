// Apollo Client (current major) against a real attache server: the example of docs/api.md
// (src/attach.ts, compiled to build/), batch uploads, cursor pagination with fetchMore,
// downloads, deletion and the typed errors of refused uploads.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { ApolloClient, CombinedGraphQLErrors, HttpLink, InMemoryCache, gql } from "@apollo/client";
import { relayStylePagination } from "@apollo/client/utilities";

import { attach, createClient } from "../build/src/attach.js";
import { download, graphqlUrl, ownerId, pdf, png, refusedWithStatus, sha256, token, tokenFor } from "./helpers.mjs";

const FIELDS = "id ownerType ownerId filename contentType byteSize sha256 url downloadUrl createdAt createdBy";

const GET = gql`
  query Get($id: ID!) { attachment(id: $id) { ${FIELDS} } }
`;
const LIST = gql`
  query List($ownerType: String!, $ownerId: String, $first: Int, $after: String) {
    attachments(ownerType: $ownerType, ownerId: $ownerId, first: $first, after: $after) {
      totalCount
      pageInfo { hasNextPage endCursor }
      edges { cursor node { id filename sha256 } }
    }
  }
`;
const UPLOAD = gql`
  mutation UploadOne($input: UploadAttachmentInput!) { uploadAttachment(input: $input) { ${FIELDS} } }
`;
const UPLOAD_BATCH = gql`
  mutation UploadMany($input: [UploadAttachmentInput!]!) { uploadAttachments(input: $input) { ${FIELDS} } }
`;
const DELETE = gql`
  mutation Delete($id: ID!) { deleteAttachment(id: $id) }
`;

const client = createClient(graphqlUrl, token);

async function get(id, apollo = client) {
  const { data } = await apollo.query({ query: GET, variables: { id }, fetchPolicy: "network-only" });
  return data.attachment;
}

async function list(owner, first = 20) {
  const { data } = await client.query({
    query: LIST,
    variables: { ownerType: "contract", ownerId: owner, first },
    fetchPolicy: "network-only",
  });
  return data.attachments;
}

/** The GraphQL errors of a refused mutation, as Apollo Client surfaces them. */
async function refusal(promise) {
  const error = await promise.then(
    (result) => assert.fail(`expected a refusal, got ${JSON.stringify(result.data)}`),
    (error) => error,
  );
  assert.ok(CombinedGraphQLErrors.is(error), `expected CombinedGraphQLErrors, got ${error?.name}: ${error}`);
  return error.errors;
}

describe("docs/api.md example (src/attach.ts)", () => {
  it("uploads a File as base64 and returns a url that opens without headers", async () => {
    const contract = ownerId("readme");
    const bytes = pdf("Signed contract");
    const file = new File([bytes], "signed contract.pdf", { type: "application/pdf" });

    const url = await attach(client, file, contract);
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/api\/attachments\/[0-9a-f-]{36}\/download\?/);

    const opened = await download(url);
    assert.equal(opened.status, 200);
    assert.equal(opened.headers.get("content-type"), "application/pdf");
    assert.deepEqual(opened.bytes, bytes);

    const { totalCount, edges } = await list(contract);
    assert.equal(totalCount, 1);
    const attachment = await get(edges[0].node.id);
    assert.equal(attachment.filename, "signed contract.pdf");
    assert.equal(attachment.contentType, "application/pdf");
    assert.equal(attachment.byteSize, bytes.length);
    assert.equal(attachment.sha256, sha256(bytes));
    assert.equal(attachment.ownerType, "contract");
    assert.equal(attachment.ownerId, contract);
  });
});

describe("Apollo Client", () => {
  it("uploadAttachments stores a batch, in order, and attachment(id) reads each back", async () => {
    const owner = ownerId("batch");
    const files = [
      { filename: "scan.pdf", bytes: pdf("Page 1") },
      { filename: "logo.png", bytes: png },
      { filename: "notes.txt", bytes: Buffer.from("Delivery on Monday.\n") },
      { filename: "prices.csv", bytes: Buffer.from("item,price\nbolt,0.10\n") },
    ];
    const { data } = await client.mutate({
      mutation: UPLOAD_BATCH,
      variables: {
        input: files.map(({ filename, bytes }) => ({
          ownerType: "contract",
          ownerId: owner,
          filename,
          base64: bytes.toString("base64"),
          sha256: sha256(bytes),
        })),
      },
    });
    const stored = data.uploadAttachments;
    assert.deepEqual(
      stored.map((a) => [a.filename, a.contentType, a.byteSize]),
      [
        ["scan.pdf", "application/pdf", files[0].bytes.length],
        ["logo.png", "image/png", png.length],
        ["notes.txt", "text/plain", files[2].bytes.length],
        ["prices.csv", "text/csv", files[3].bytes.length],
      ],
    );
    for (const [i, attachment] of stored.entries()) {
      const again = await get(attachment.id);
      assert.equal(again.sha256, sha256(files[i].bytes));
      assert.equal(again.createdBy, attachment.createdBy);
    }
  });

  it("pages through attachments with fetchMore and Relay cursors", async () => {
    const owner = ownerId("pages");
    const { data } = await client.mutate({
      mutation: UPLOAD_BATCH,
      variables: {
        input: Array.from({ length: 5 }, (_, i) => ({
          ownerType: "contract",
          ownerId: owner,
          filename: `page-${i}.txt`,
          base64: Buffer.from(`attachment ${i}\n`).toString("base64"),
        })),
      },
    });
    const uploaded = data.uploadAttachments.map((a) => a.id);

    // The cache policy a Relay-paginated list gets in an Apollo app.
    const paged = new ApolloClient({
      link: new HttpLink({ uri: graphqlUrl, headers: { Authorization: `Bearer ${token}` } }),
      cache: new InMemoryCache({
        typePolicies: { Query: { fields: { attachments: relayStylePagination(["ownerType", "ownerId"]) } } },
      }),
    });
    const query = paged.watchQuery({ query: LIST, variables: { ownerType: "contract", ownerId: owner, first: 2 } });

    // What a component rendering the list sees: every result the query emits.
    let latest;
    let waiting;
    const subscription = query.subscribe({
      next: (result) => {
        latest = result;
        if (waiting && !result.loading && waiting.until(result)) waiting.resolve(result);
      },
      error: (error) => waiting?.reject(error),
    });
    const rendered = (until) =>
      new Promise((resolve, reject) => {
        if (latest && !latest.loading && until(latest)) return resolve(latest);
        waiting = { until, resolve, reject };
      });
    try {
      let page = (await rendered(() => true)).data.attachments;
      assert.equal(page.edges.length, 2);
      assert.equal(page.totalCount, 5);
      const fetched = [page.edges.length];
      while (page.pageInfo.hasNextPage) {
        assert.ok(fetched.length < 5, "pagination ends");
        const more = await query.fetchMore({ variables: { after: page.pageInfo.endCursor } });
        const got = more.data.attachments.edges.length;
        assert.equal(more.data.attachments.totalCount, 5);
        fetched.push(got);
        const total = page.edges.length + got;
        page = (await rendered((result) => result.data.attachments.edges.length === total)).data.attachments;
      }
      assert.deepEqual(fetched, [2, 2, 1]);
      const ids = page.edges.map((edge) => edge.node.id);
      assert.equal(new Set(ids).size, 5, "no attachment twice");
      assert.deepEqual([...ids].sort(), [...uploaded].sort());
      for (const edge of page.edges) assert.equal(typeof edge.cursor, "string");
      assert.equal(page.pageInfo.hasNextPage, false);
    } finally {
      subscription.unsubscribe();
    }
  });

  it("downloads url without headers and downloadUrl with the bearer token, byte for byte", async () => {
    const bytes = pdf("Purchase order 1042");
    const { data } = await client.mutate({
      mutation: UPLOAD,
      variables: {
        input: { ownerType: "contract", ownerId: ownerId("dl"), filename: "PO 1042 — signé.pdf", base64: bytes.toString("base64") },
      },
    });
    const { url, downloadUrl, sha256: digest } = data.uploadAttachment;

    const signed = await download(url);
    assert.equal(signed.status, 200);
    assert.deepEqual(signed.bytes, bytes);
    assert.equal(signed.headers.get("etag"), `"${digest}"`);

    const bearer = await download(downloadUrl, { Authorization: `Bearer ${token}` });
    assert.equal(bearer.status, 200);
    assert.deepEqual(bearer.bytes, bytes);
    assert.match(bearer.headers.get("content-disposition"), /^attachment;.*filename\*=UTF-8''PO%201042%20%E2%80%94%20sign%C3%A9\.pdf/);

    assert.equal((await download(downloadUrl)).status, 401, "downloadUrl needs the token");
    const tampered = url.replace(/signature=([0-9a-f])/, (_, c) => `signature=${c === "0" ? "1" : "0"}`);
    assert.notEqual(tampered, url);
    assert.equal((await download(tampered)).status, 403, "a changed signature is refused");
  });

  it("keeps tenants apart: another tenant's token sees null", async () => {
    const url = await attach(client, new File([png], "logo.png", { type: "image/png" }), ownerId("tenant"));
    const id = url.match(/attachments\/([0-9a-f-]{36})\//)[1];
    assert.notEqual(await get(id), null);
    const other = createClient(graphqlUrl, tokenFor("other-tenant"));
    assert.equal(await get(id, other), null);
  });

  it("deleteAttachment removes it: attachment(id) is null and its links are gone", async () => {
    const bytes = Buffer.from("to be deleted\n");
    const { data } = await client.mutate({
      mutation: UPLOAD,
      variables: { input: { ownerType: "contract", ownerId: ownerId("del"), filename: "tmp.txt", base64: bytes.toString("base64") } },
    });
    const { id, url, downloadUrl } = data.uploadAttachment;
    const deleted = await client.mutate({ mutation: DELETE, variables: { id } });
    assert.equal(deleted.data.deleteAttachment, id);
    assert.equal(await get(id), null);
    assert.equal((await download(url)).status, 404);
    assert.equal((await download(downloadUrl, { Authorization: `Bearer ${token}` })).status, 404);

    const errors = await refusal(client.mutate({ mutation: DELETE, variables: { id } }));
    assert.equal(errors[0].extensions.code, "NOT_FOUND");
  });

  describe("refused uploads as Apollo surfaces them: extensions.code", () => {
    const cases = [
      {
        name: "a PDF declared as a PNG",
        code: "UNSUPPORTED_MEDIA_TYPE",
        input: { filename: "logo.png", contentType: "image/png", base64: pdf("not a png").toString("base64") },
      },
      {
        name: "an executable named .pdf",
        code: "UNSUPPORTED_MEDIA_TYPE",
        input: { filename: "invoice.pdf", base64: Buffer.from("MZ\x90\x00\x03\x00\x00\x00\x04\x00", "latin1").toString("base64") },
      },
      { name: "invalid base64", code: "BAD_USER_INPUT", input: { filename: "a.txt", base64: "not base64!" } },
      { name: "an empty file", code: "BAD_USER_INPUT", input: { filename: "a.txt", base64: "" } },
      {
        name: "a wrong sha256",
        code: "CHECKSUM_MISMATCH",
        input: { filename: "a.txt", base64: Buffer.from("hello\n").toString("base64"), sha256: "0".repeat(64) },
      },
      {
        name: "an unknown ownerType",
        code: "BAD_USER_INPUT",
        input: { ownerType: "nope", filename: "a.txt", base64: Buffer.from("hello\n").toString("base64") },
      },
    ];
    for (const { name, code, input } of cases) {
      it(`${name}: ${code}, nothing stored`, async () => {
        const owner = ownerId("refused");
        const errors = await refusal(
          client.mutate({ mutation: UPLOAD, variables: { input: { ownerType: "contract", ownerId: owner, ...input } } }),
        );
        assert.equal(errors.length, 1);
        assert.equal(errors[0].extensions.code, code, errors[0].message);
        assert.ok(errors[0].message.length > 0);
        assert.equal((await list(owner)).totalCount, 0);
      });
    }

    it("a logo over invoice_logo's 2 MiB: PAYLOAD_TOO_LARGE, nothing stored", async () => {
      const big = Buffer.concat([png, Buffer.alloc(2 * 1024 * 1024)]);
      const errors = await refusal(
        client.mutate({
          mutation: UPLOAD,
          variables: { input: { ownerType: "invoice_logo", filename: "logo.png", base64: big.toString("base64") } },
        }),
      );
      assert.equal(errors[0].extensions.code, "PAYLOAD_TOO_LARGE", errors[0].message);
    });

    // HTTP 413 in GraphQL's media type, which Apollo Client 4 asks for: its code reaches
    // the app as every other refusal's (as application/json it was a ServerError whose
    // code only JSON.parse(error.bodyText) could read).
    it("a body over MAX_REQUEST_BYTES: HTTP 413, PAYLOAD_TOO_LARGE like every refusal", async () => {
      const base64 = Buffer.alloc(11 * 1024 * 1024, "A").toString("base64"); // 14.7 MiB of JSON
      const error = await refusedWithStatus(
        client.mutate({
          mutation: UPLOAD,
          variables: { input: { ownerType: "contract", ownerId: ownerId("413"), filename: "big.txt", base64 } },
        }),
      );
      assert.ok(CombinedGraphQLErrors.is(error), `expected CombinedGraphQLErrors, got ${error?.name}: ${error}`);
      assert.equal(error.errors[0].extensions.code, "PAYLOAD_TOO_LARGE");
      assert.match(error.errors[0].message, /MAX_REQUEST_BYTES/);
    });

    it("a batch with one bad file stores none of them", async () => {
      const owner = ownerId("batch-refused");
      const good = { ownerType: "contract", ownerId: owner, filename: "ok.txt", base64: Buffer.from("fine\n").toString("base64") };
      const errors = await refusal(
        client.mutate({
          mutation: UPLOAD_BATCH,
          variables: { input: [good, { ...good, filename: "bad.png", contentType: "image/png" }] },
        }),
      );
      assert.equal(errors[0].extensions.code, "UNSUPPORTED_MEDIA_TYPE");
      assert.equal((await list(owner)).totalCount, 0);
    });

    it("an unauthenticated client gets UNAUTHENTICATED", async () => {
      const anonymous = createClient(graphqlUrl, "not-a-token");
      const error = await anonymous
        .query({ query: LIST, variables: { ownerType: "contract", first: 1 } })
        .then(() => assert.fail("expected a refusal"), (e) => e);
      assert.ok(CombinedGraphQLErrors.is(error), String(error));
      assert.equal(error.errors[0].extensions.code, "UNAUTHENTICATED");
    });
  });
});
