// attache's webhooks as a receiver built on the Standard Webhooks reference library
// (`standardwebhooks`) sees them: every delivery verifies; a 503 with `Retry-After`
// is retried when asked; a `410 Gone` is not retried.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, describe, it } from "node:test";

import { Webhook } from "standardwebhooks";

import { graphqlUrl, ownerId, token } from "./helpers.mjs";

const port = Number(process.env.ATTACHE_WEBHOOK_PORT);
const webhook = new Webhook(process.env.ATTACHE_WEBHOOK_SECRET);

/** Every request the receiver got: when, its verified payload (or the error), its answer. */
const received = [];
/** How the receiver answers the attempts of a file, by owner id: a list of statuses. */
const script = new Map();

const server = createServer((request, response) => {
  const chunks = [];
  request.on("data", (chunk) => chunks.push(chunk));
  request.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    let payload;
    let error;
    try {
      payload = webhook.verify(body, request.headers);
    } catch (err) {
      error = String(err);
    }
    const fileId = payload?.data?.file_id;
    const plan = script.get(payload?.data?.owner_id) ?? [];
    const earlier = received.filter((r) => r.fileId === fileId).length;
    const status = plan[earlier] ?? 200;
    received.push({ at: Date.now(), fileId, payload, error, status, id: request.headers["webhook-id"] });
    if (status === 503) response.setHeader("retry-after", "1");
    response.writeHead(status).end();
  });
});

async function upload(owner, name) {
  const response = await fetch(graphqlUrl, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({
      query: "mutation($input: UploadAttachmentInput!) { uploadAttachment(input: $input) { id } }",
      variables: { input: { ownerType: "contract", ownerId: owner, filename: name, base64: Buffer.from(`${name}\n`).toString("base64") } },
    }),
  });
  const body = await response.json();
  assert.equal(body.errors, undefined, JSON.stringify(body.errors));
  return body.data.uploadAttachment.id;
}

async function until(what, done, ms = 15_000) {
  const started = Date.now();
  while (!done()) {
    if (Date.now() - started > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe("webhooks, verified by the Standard Webhooks reference library", () => {
  before(
    () =>
      new Promise((resolve, reject) => {
        server.once("error", (err) => reject(new Error(`the receiver cannot listen on port ${port}: ${err.message}`)));
        server.listen(port, "127.0.0.1", resolve);
      }),
  );
  // Retries of other files' events (sent while nothing listened) keep arriving on
  // keep-alive connections: close them, or close() waits for them to go idle.
  after(
    () =>
      new Promise((resolve) => {
        server.close(resolve);
        server.closeAllConnections();
      }),
  );

  it("every delivery verifies, and file.stored carries the file", async () => {
    const owner = ownerId("hooks");
    const id = await upload(owner, "signed.txt");
    await until("the delivery", () => received.some((r) => r.fileId === id));
    const mine = received.find((r) => r.fileId === id);
    assert.equal(mine.payload.type, "file.stored");
    assert.equal(mine.payload.data.owner_id, owner);
    assert.match(mine.payload.data.url, /^http/);
    assert.deepEqual(received.filter((r) => r.error), [], "every request verifies");
  });

  it("a 503 with Retry-After is retried when asked", async () => {
    const owner = ownerId("hooks");
    script.set(owner, [503, 200]);
    const id = await upload(owner, "later.txt");
    await until("two attempts", () => received.filter((r) => r.fileId === id).length >= 2);
    const [first, second] = received.filter((r) => r.fileId === id);
    assert.equal(first.id, second.id, "the same event, the same webhook-id");
    assert.ok(second.at - first.at >= 900, `retried after ${second.at - first.at} ms`);
  });

  it("a 410 Gone is not retried", async () => {
    const owner = ownerId("hooks");
    script.set(owner, [410, 200, 200]);
    const id = await upload(owner, "gone.txt");
    await until("the first attempt", () => received.some((r) => r.fileId === id));
    await new Promise((resolve) => setTimeout(resolve, 3000));
    assert.equal(received.filter((r) => r.fileId === id).length, 1, "one attempt only");
  });
});
