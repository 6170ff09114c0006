#!/bin/sh
# The image's HEALTHCHECK: GET /healthz on the address `serve` listens on. That is
# LISTEN_ADDR, unless flags gave `serve` another (`docker run IMAGE --listen-addr
# 0.0.0.0:9000`): the entrypoint then wrote it to $TMPDIR/attache-listen-addr, since a
# health check sees the container's environment, not its command line. An unspecified
# host (0.0.0.0, [::]) is checked on the loopback, any other on itself.
set -eu

addr=$(cat "${TMPDIR:-/tmp}/attache-listen-addr" 2>/dev/null || true)
addr=${addr:-${LISTEN_ADDR:-127.0.0.1:8080}}
host=${addr%:*}
port=${addr##*:}
case "$host" in
  0.0.0.0) host=127.0.0.1 ;;
  "[::]") host="[::1]" ;;
esac

exec curl -fsS --max-time 2 -o /dev/null "http://$host:$port/healthz"
