// The offline GraphiQL playground that attache serves at GET /graphql, driven in Debian's
// headless Chromium by playwright-core (no browser download): put a token in the Headers
// tab, run a query, read the result pane, and fail on any request to another origin.
//
//   ATTACHE_ORIGIN=http://127.0.0.1:8080 ATTACHE_TOKEN=... node browser.mjs [screenshot.png]
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const origin = process.env.ATTACHE_ORIGIN;
const token = process.env.ATTACHE_TOKEN;
if (!origin || !token) throw new Error("ATTACHE_ORIGIN and ATTACHE_TOKEN must be set (tests/clients/run.sh sets them)");
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const screenshot = resolve(process.argv[2] ?? join(repoRoot, "target/clients/playground.png"));
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";

// A fresh owner with a known number of attachments, so the page's answer can be checked.
const ownerId = `browser-${Date.now()}`;
const stored = 3;
for (let i = 0; i < stored; i++) {
  const response = await fetch(`${origin}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", Authorization: `Bearer ${token}` },
    body: JSON.stringify({
      query: "mutation($input: UploadAttachmentInput!) { uploadAttachment(input: $input) { id } }",
      variables: { input: { ownerType: "contract", ownerId, filename: `seen-${i}.txt`, base64: Buffer.from(`${i}\n`).toString("base64") } },
    }),
  });
  const body = await response.json();
  assert.equal(body.errors, undefined, JSON.stringify(body.errors));
}
const query = `{
  attachments(ownerType: "contract", ownerId: "${ownerId}", first: 1) {
    totalCount
    nodes { filename }
  }
}`;

const userDataDir = await mkdtemp(join(tmpdir(), "attache-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  // As root on this machine: no sandbox, and none of Chromium's own calls home.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  viewport: { width: 1440, height: 800 },
});
const foreign = [];
const pageErrors = [];
let failed = false;
try {
  // Every request the page makes must go to attache itself: the playground works offline.
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (new URL(url).origin === origin) return route.continue();
    foreign.push(url);
    return route.abort("blockedbyclient");
  });
  context.on("weberror", (error) => pageErrors.push(String(error.error())));
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("websocket", (ws) => foreign.push(ws.url()));
  page.on("console", (message) => {
    if (message.type() === "error") console.error(`  console: ${message.text()} ${message.location().url ?? ""}`);
  });

  const response = await page.goto(`${origin}/graphql`); // Chromium asks for text/html
  assert.equal(response.status(), 200);
  assert.match(response.headers()["content-type"], /^text\/html/);
  await page.locator(".graphiql-query-editor .CodeMirror").waitFor({ timeout: 20_000 });

  // Headers tab: replace the placeholder with the real token, as a user would.
  await page.getByRole("button", { name: "Headers", exact: true }).click();
  const headers = page.locator('section.graphiql-editor-tool[aria-label="Headers"] .CodeMirror').last();
  await headers.click();
  await page.keyboard.press("Control+A");
  await page.keyboard.insertText(JSON.stringify({ Authorization: `Bearer ${token}` }));
  assert.match(await headers.innerText(), /Bearer eyJ/);

  // Query editor: type the query and run it.
  await page.locator(".graphiql-query-editor .CodeMirror").click();
  await page.keyboard.press("Control+A");
  await page.keyboard.insertText(query);
  await page.getByRole("button", { name: /^Execute query/ }).click();

  // The result pane shows attache's answer.
  const result = page.locator(".graphiql-response .CodeMirror-code");
  await page.waitForFunction(() => /totalCount/.test(document.querySelector(".graphiql-response")?.innerText ?? ""), null, {
    timeout: 20_000,
  });
  const shown = (await result.innerText()).replace(/\u200b/g, "").replace(/\u00a0/g, " ");
  let answer;
  try {
    answer = JSON.parse(shown);
  } catch {
    throw new Error(`the result pane does not show JSON: ${JSON.stringify(shown)}`);
  }
  assert.deepEqual(answer, { data: { attachments: { totalCount: stored, nodes: [{ filename: `seen-${stored - 1}.txt` }] } } });
  console.log(`playground: ${origin}/graphql answered ${JSON.stringify(answer)}`);

  // The schema the page fetched on load was refused (no token then): fetch it again,
  // now that the Headers tab holds one.
  await page.getByRole("button", { name: "Re-fetch GraphQL schema" }).click();
  // The documentation explorer shows the schema the page fetched by introspection.
  await page.getByRole("button", { name: "Show Documentation Explorer" }).click();
  const docs = page.locator(".graphiql-plugin");
  await docs.getByText("AttachmentConnection", { exact: true }).waitFor({ timeout: 10_000 });
  assert.match(await docs.innerText(), /query: Query[\s\S]*mutation: Mutation/);

  await mkdir(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot });
  console.log(`playground: screenshot ${screenshot}`);

  assert.deepEqual(foreign, [], "requests to another origin");
  assert.deepEqual(pageErrors, [], "uncaught errors in the page");
} catch (error) {
  failed = true;
  console.error(`playground: FAILED: ${error?.stack ?? error}`);
  if (foreign.length) console.error(`playground: requests to another origin: ${foreign.join(", ")}`);
  const page = context.pages()[0];
  if (page) {
    await mkdir(dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot }).catch(() => {});
    console.error(`playground: screenshot of the failure ${screenshot}`);
  }
} finally {
  await context.close();
  await rm(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
