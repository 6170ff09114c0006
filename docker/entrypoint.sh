#!/bin/sh
# The image's entrypoint. `docker run IMAGE`, `docker run IMAGE serve [FLAGS]` and
# `docker run IMAGE --some-flag value` replace this shell with `attache serve`,
# which so runs as PID 1 and gets the SIGTERM of `docker stop`; `serve` applies the
# database migrations itself, once it holds the database (a SQLite file is one
# server's) and on the database its flags name. Any other command runs as it is:
# `docker run IMAGE backup create`, `docker run IMAGE token --tenant acme`.
# ATTACHE_BIN names another binary (docker/check.sh runs this script on a build).
set -eu

attache=${ATTACHE_BIN:-attache}

if [ "$#" -eq 0 ]; then
  set -- serve
fi
case "$1" in
  serve) shift ;;
  -*) ;;
  *) exec "$attache" "$@" ;;
esac

# The address serve listens on, for docker/healthcheck.sh: LISTEN_ADDR, or the last
# --listen-addr flag, as serve itself reads them. A read-only /tmp only loses the
# flag's address (the check then reads LISTEN_ADDR).
listen=${LISTEN_ADDR:-}
value_follows=no
for arg in "$@"; do
  if [ "$value_follows" = yes ]; then
    listen=$arg
    value_follows=no
    continue
  fi
  case "$arg" in
    --listen-addr) value_follows=yes ;;
    --listen-addr=*) listen=${arg#--listen-addr=} ;;
  esac
done
printf '%s\n' "$listen" >"${TMPDIR:-/tmp}/attache-listen-addr" 2>/dev/null || true

exec "$attache" serve "$@"
