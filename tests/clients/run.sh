#!/usr/bin/env bash
# Real clients against a real attache server (issue 14). From the repository root:
#
#   bash tests/clients/run.sh target/debug/attache
#
# Installs the pinned npm packages (npm ci) when node_modules is missing or stale,
# generates TypeScript types from schema.graphql for operations/*.graphql
# (graphql-codegen) and type-checks src/ with them (tsc), starts `attache serve` on a free
# port with a fresh SQLite database and storage folder (fs backend), runs the Apollo
# Client / apollo-upload-client / codegen suite (node --test test/), then drives the
# GraphiQL playground in Debian's headless Chromium (browser.mjs, screenshot in
# target/clients/playground.png), stops the server. Exit status: non-zero when any step
# failed. ATTACHE_SCHEMA=path/to/schema.graphql runs codegen against another SDL.
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: bash tests/clients/run.sh path/to/attache" >&2
  exit 2
fi
bin=$(realpath -e -- "$1" 2>/dev/null) || { echo "run.sh: no such file: $1" >&2; exit 2; }
[ -x "$bin" ] || { echo "run.sh: not executable: $bin" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$here"

now_ms() { date +%s%3N; }
started=$(now_ms)
summary=()
failed=()
step() { # step NAME COMMAND...: runs it, records the outcome and its duration
  local name=$1 t0 rc
  shift
  echo "==> $name"
  t0=$(now_ms)
  "$@"
  rc=$?
  local took
  took=$(awk -v ms=$(($(now_ms) - t0)) 'BEGIN { printf "%.1f s", ms / 1000 }')
  if [ $rc -eq 0 ]; then
    summary+=("ok      $took  $name")
  else
    summary+=("FAILED  $took  $name")
    failed+=("$name")
  fi
  return $rc
}

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null) || { echo "run.sh: node not found" >&2; exit 1; }
[ "$node_major" -ge 20 ] || { echo "run.sh: Node.js 20 or newer needed, found $(node --version)" >&2; exit 1; }

# 1. npm packages, exactly as package-lock.json pins them.
stamp="$(sha256sum package-lock.json | cut -d' ' -f1) node-$(node --version)"
if [ "$(cat node_modules/.attache-stamp 2>/dev/null)" != "$stamp" ]; then
  install() { npm ci --no-audit --no-fund && echo "$stamp" > node_modules/.attache-stamp; }
  step "npm ci" install || { echo "run.sh: npm ci failed" >&2; exit 1; }
else
  summary+=("ok      0.0 s  npm ci (node_modules up to date)")
fi

# 2. Codegen from the checked-in SDL, then tsc over src/ (the example of docs/api.md and the
#    codegen-typed client); tsc also writes build/, which the suite imports.
rm -rf generated build
step "graphql-codegen (schema: ${ATTACHE_SCHEMA:-schema.graphql})" node_modules/.bin/graphql-codegen --config codegen.ts
step "tsc (type-check src/ against the generated types)" node_modules/.bin/tsc -p tsconfig.json

# 3. A real server: free port, fresh SQLite database, fresh storage folder.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/attache-clients.XXXXXX")
server_pid=
stop_server() { # SIGTERM; fails unless the server exits with status 0 within 10 s
  [ -n "$server_pid" ] || return 0
  local pid=$server_pid status ok=0
  server_pid=
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "run.sh: the server did not stop within 10 s of SIGTERM" >&2
    kill -KILL "$pid" 2>/dev/null
    ok=1
  fi
  wait "$pid" 2>/dev/null
  status=$?
  [ $status -eq 0 ] || { echo "run.sh: the server exited with status $status" >&2; ok=1; }
  return $ok
}
cleanup() { stop_server; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

secret=$(node -p 'require("crypto").randomBytes(32).toString("hex")')
# Webhooks go to a port the webhook test listens on (test/webhooks.test.mjs), signed
# with a secret it verifies with the Standard Webhooks reference library. The port
# is free and below the kernel's ephemeral range, so no client connection of the
# suite can take it before the test listens (an ephemeral port from listen(0) can).
webhook_port=$(node -e '
  const [low] = require("fs").readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/).map(Number);
  const net = require("net");
  const attempt = (n) => {
    const port = 10000 + Math.floor(Math.random() * (Math.max(low, 10001) - 10000));
    const s = net.createServer();
    s.once("error", () => (n > 0 ? attempt(n - 1) : process.exit(1)));
    s.listen(port, "127.0.0.1", () => { console.log(port); s.close(); });
  };
  attempt(50);')
webhook_secret="whsec_$(node -p 'require("crypto").randomBytes(32).toString("base64")')"
start_server() {
  env -u PUBLIC_BASE_URL -u JWT_PUBLIC_KEY_FILE -u JWT_ISSUER -u JWT_AUDIENCE -u TENANT_CLAIM \
    -u URL_MODE -u COLLECTIONS_FILE -u CORS_ALLOWED_ORIGINS -u WEBHOOK_URLS -u AUTO_MIGRATE_STORAGE \
    -u MAX_UPLOAD_BYTES -u MAX_REQUEST_BYTES -u MAX_BATCH_FILES \
    DATABASE_URL="sqlite://$tmp/attache.db?mode=rwc" STORAGE_BACKEND=fs STORAGE_ROOT="$tmp/uploads" \
    WEBHOOK_URLS="http://127.0.0.1:$webhook_port/hooks" WEBHOOK_SECRET="$webhook_secret" \
    RUST_LOG=info LOG_FORMAT=text LISTEN_ADDR=127.0.0.1:0 JWT_SECRET="$secret" SIGNING_KEY="$(node -p 'require("crypto").randomBytes(32).toString("hex")')" \
    "$bin" serve >"$tmp/server.log" 2>&1 &
  server_pid=$!
  # Port 0: the server says which port it got ("attache is listening url=http://127.0.0.1:PORT/graphql").
  for _ in $(seq 1 300); do
    url=$(grep -o 'attache is listening url=http://[^ ]*' "$tmp/server.log" | head -1 | sed 's/.*url=//')
    [ -n "$url" ] && break
    kill -0 "$server_pid" 2>/dev/null || { echo "run.sh: the server exited:" >&2; cat "$tmp/server.log" >&2; return 1; }
    sleep 0.1
  done
  [ -n "$url" ] || { echo "run.sh: the server did not say where it listens within 30 s" >&2; cat "$tmp/server.log" >&2; return 1; }
  origin=${url%/graphql}
  for _ in $(seq 1 100); do
    curl -fsS "$origin/healthz" >/dev/null 2>&1 && { echo "attache serve at $origin (data in $tmp)"; return 0; }
    sleep 0.1
  done
  echo "run.sh: $origin/healthz did not answer within 10 s" >&2
  return 1
}
if step "attache serve (fs backend, SQLite)" start_server; then
  export ATTACHE_ORIGIN=$origin ATTACHE_JWT_SECRET=$secret
  export ATTACHE_WEBHOOK_PORT=$webhook_port ATTACHE_WEBHOOK_SECRET=$webhook_secret
  ATTACHE_TOKEN=$(JWT_SECRET=$secret "$bin" token --tenant clients --sub client-suite --ttl 1h)
  export ATTACHE_TOKEN

  # 4. The client suite.
  step "node --test: Apollo Client, apollo-upload-client, codegen-typed operations" \
    node --test --test-reporter=spec --test-timeout=60000 test/*.test.mjs

  # 5. The playground in headless Chromium.
  if [ -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    step "browser: GraphiQL playground in headless Chromium" node browser.mjs "$root/target/clients/playground.png"
  else
    echo "run.sh: ${CHROMIUM:-/usr/bin/chromium} not found (apt-get install -y chromium)" >&2
    summary+=("FAILED  0.0 s  browser: chromium not installed")
    failed+=("browser")
  fi

  step "attache serve stops on SIGTERM" stop_server
fi
if [ ${#failed[@]} -gt 0 ] && [ -s "$tmp/server.log" ]; then
  echo "--- last lines of the server log ---"
  tail -n 30 "$tmp/server.log"
fi

echo
echo "client suite summary:"
printf '  %s\n' "${summary[@]}"
total=$(awk -v ms=$(($(now_ms) - started)) 'BEGIN { printf "%.1f s", ms / 1000 }')
if [ ${#failed[@]} -gt 0 ]; then
  echo "  FAILED after $total: ${failed[*]}"
  exit 1
fi
echo "  all passed in $total"
