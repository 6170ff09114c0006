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

exec "$attache" serve "$@"
