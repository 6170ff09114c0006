// The codegen-typed operations (src/typed.ts, operations/*.graphql) run against the server:
// what tsc checked is also what attache answers.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { ApolloClient, InMemoryCache } from "@apollo/client";
import UploadHttpLink from "apollo-upload-client/UploadHttpLink.mjs";

import { createClient } from "../build/src/attach.js";
import { allPages, contract, get, remove, upload, uploadBatch, uploadFile } from "../build/src/typed.js";
import { graphqlUrl, ownerId, pdf, png, sha256, token } from "./helpers.mjs";

describe("codegen-typed operations", () => {
  const client = createClient(graphqlUrl, token);

  it("Upload, UploadBatch, Contract, AttachmentsPage, Attachment, Delete", async () => {
    const owner = ownerId("typed");
    const one = await upload(client, { ownerType: "contract", ownerId: owner, filename: "a.png", base64: png.toString("base64") });
    assert.equal(one.contentType, "image/png");
    assert.equal(one.sha256, sha256(png));

    const batch = await uploadBatch(
      client,
      ["b.txt", "c.txt"].map((filename) => ({
        ownerType: "contract",
        ownerId: owner,
        filename,
        base64: Buffer.from(filename).toString("base64"),
      })),
    );
    assert.deepEqual(batch.map((a) => a.filename), ["b.txt", "c.txt"]);

    const listed = await contract(client, owner);
    assert.equal(listed.totalCount, 3);
    assert.deepEqual([...listed.filenames].sort(), ["a.png", "b.txt", "c.txt"]);

    const pages = await allPages(client, "contract", owner, 1);
    assert.equal(pages.totalCount, 3);
    assert.deepEqual([...pages.ids].sort(), [one.id, ...batch.map((a) => a.id)].sort());

    const got = await get(client, one.id);
    assert.equal(got?.filename, "a.png");
    assert.equal(got?.ownerId, owner);

    assert.equal(await remove(client, one.id), one.id);
    assert.equal(await get(client, one.id), null);
  });

  it("UploadFile with a File through apollo-upload-client", async () => {
    const uploads = new ApolloClient({
      link: new UploadHttpLink({
        uri: graphqlUrl,
        headers: { Authorization: `Bearer ${token}`, "Apollo-Require-Preflight": "true" },
      }),
      cache: new InMemoryCache(),
    });
    const bytes = pdf("typed");
    const stored = await uploadFile(uploads, ownerId("typed"), new File([bytes], "typed.pdf", { type: "application/pdf" }), sha256(bytes));
    assert.equal(stored.filename, "typed.pdf");
    assert.equal(stored.byteSize, bytes.length);
  });
});
