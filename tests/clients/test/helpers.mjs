// Shared by the client tests: where the server is, tokens, test files.
import { createHash, createHmac, randomUUID } from "node:crypto";

/** Origin of the attache server that run.sh started, e.g. http://127.0.0.1:41234 */
export const origin = required("ATTACHE_ORIGIN");
export const graphqlUrl = `${origin}/graphql`;
export const token = required("ATTACHE_TOKEN");

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the suite through tests/clients/run.sh`);
  return value;
}

/** A fresh owner id, so every test sees only its own attachments. */
export function ownerId(prefix) {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

/** An HS256 token for another tenant, signed with the server's JWT_SECRET. */
export function tokenFor(tenant, sub = "client-tests") {
  const secret = required("ATTACHE_JWT_SECRET");
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, tenant_id: tenant, iat: now, exp: now + 600 })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

export const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

/** A small, well-formed one-page PDF whose page shows `text`. */
export function pdf(text) {
  const stream = `BT /F1 18 Tf 72 720 Td (${text.replace(/[()\\]/g, "\\$&")}) Tj ET`;
  const objects = [
    "<< /Type /Catalog /Pages 2 0 R >>",
    "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
    "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
    `<< /Length ${stream.length} >>\nstream\n${stream}\nendstream`,
    "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
  ];
  let out = "%PDF-1.4\n%\xe2\xe3\xcf\xd3\n";
  const offsets = [];
  objects.forEach((body, i) => {
    offsets.push(Buffer.byteLength(out, "latin1"));
    out += `${i + 1} 0 obj\n${body}\nendobj\n`;
  });
  const xref = Buffer.byteLength(out, "latin1");
  out += `xref\n0 ${objects.length + 1}\n0000000000 65535 f \n`;
  for (const offset of offsets) out += `${String(offset).padStart(10, "0")} 00000 n \n`;
  out += `trailer\n<< /Size ${objects.length + 1} /Root 1 0 R >>\nstartxref\n${xref}\n%%EOF\n`;
  return Buffer.from(out, "latin1");
}

/** A 1x1 PNG. */
export const png = Buffer.from(
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
  "base64",
);

/** GET a URL and return status, headers and body bytes. */
export async function download(url, headers = {}) {
  const response = await fetch(url, { headers });
  return { status: response.status, headers: response.headers, bytes: Buffer.from(await response.arrayBuffer()) };
}

/**
 * Awaits a request that the server must answer with an HTTP error status. A connection
 * the server closed while the client was still sending the body (EPIPE, ECONNRESET)
 * fails with that explanation: the client never saw the answer.
 */
export async function refusedWithStatus(promise) {
  try {
    return await promise;
  } catch (error) {
    const cause = error?.cause?.code ?? error?.networkError?.cause?.code;
    if (cause === "EPIPE" || cause === "ECONNRESET") {
      throw new Error(
        `the server closed the connection before the client could read its answer (${cause}): ` +
          "it answered without reading the request body, which a client still sending it cannot see",
        { cause: error },
      );
    }
    return error;
  }
}
