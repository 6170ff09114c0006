#!/usr/bin/env bash
# The listing over HTTP from a second process, as the performance issue measures it:
# starts the release server on SQLite and the local disk, stores 40 attachments of one
# owner, then `wrk` POSTs `attachments(first: 20)` with every field (and `url`) from
# CONNECTIONS keep-alive clients for SECONDS. Any answer but HTTP 200 is printed.
#   benches/listing_wrk.sh [target/release/attache] [SECONDS=10] [CONNECTIONS=8]
# Needs wrk (apt-get install -y wrk) and curl.
set -euo pipefail
bin="$(readlink -f "${1:-target/release/attache}")"
seconds="${2:-10}"
connections="${3:-8}"
port=18181
dir="$(mktemp -d)"
export DATABASE_URL="sqlite://$dir/a.db?mode=rwc" STORAGE_ROOT="$dir/files" \
  JWT_SECRET=listing-benchmark-secret-of-32-bytes LISTEN_ADDR="127.0.0.1:$port" \
  PUBLIC_BASE_URL="http://127.0.0.1:$port" SIGNING_KEY=listing-benchmark-signing-key-32b \
  RUST_LOG=warn
"$bin" serve >"$dir/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
token="$("$bin" token --tenant bench | tail -1)"
file="$( (printf '%%PDF-1.4\n'; head -c 2000 /dev/urandom) | base64 -w0)"
for i in $(seq 40); do
  curl -sf -o /dev/null "http://127.0.0.1:$port/graphql" \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d "{\"query\":\"mutation(\$i: UploadAttachmentInput!){uploadAttachment(input:\$i){id}}\",\"variables\":{\"i\":{\"ownerType\":\"contract\",\"ownerId\":\"c-1\",\"filename\":\"f$i.pdf\",\"base64\":\"$file\"}}}"
done
cat >"$dir/body.json" <<'JSON'
{"query":"query{attachments(ownerType:\"contract\",ownerId:\"c-1\",first:20){edges{node{id ownerType ownerId filename contentType byteSize sha256 createdAt url downloadUrl}} pageInfo{hasNextPage endCursor}}}"}
JSON
answer="$(curl -sf "http://127.0.0.1:$port/graphql" -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/json' -d @"$dir/body.json")"
[ "$(grep -o '"node"' <<<"$answer" | wc -l)" = 20 ] || { echo "not 20 attachments: $answer" >&2; exit 1; }
cat >"$dir/list.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
local body = io.open("$dir/body.json"); wrk.body = body:read("*a"); body:close()
response = function(status, headers, body)
  if status ~= 200 then print(status, body) end
end
LUA
wrk -t2 -c"$connections" -d"${seconds}s" --latency -s "$dir/list.lua" "http://127.0.0.1:$port/graphql"
