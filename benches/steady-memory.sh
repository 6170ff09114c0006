#!/usr/bin/env bash
# attache's memory and database under a steady load that nothing scrapes: a server
# on a fresh folder (SQLite and the local disk), pinned to core 0, answers listings
# (LOAD=list) or 10 KiB uploads (LOAD=upload, 16 clients) from `wrk` (on WRK_CPUS)
# for ROUNDS rounds of SECONDS_PER_ROUND; after each round its VmRSS and the size of
# the SQLite files (database, log and its index). A flat column is a server that
# does not grow with the requests it has served; a rising one keeps something per
# request (the metrics' histograms did until their upkeep, and SQLite's log under
# steady uploads until the checkpoint held the writer's turn: docs/performance.md).
#   benches/steady-memory.sh [target/release/attache]
#   LOAD=list ROUNDS=4 SECONDS_PER_ROUND=15 WRK_CPUS=1 SCRAPE=1 (a scrape of /metrics after each round)
# Prints a TSV and writes it to OUT/steady-memory-DATE.tsv. Needs wrk and taskset.
set -euo pipefail
bin="$(readlink -f "${1:-target/release/attache}")"
rounds="${ROUNDS:-4}"
seconds="${SECONDS_PER_ROUND:-15}"
out="${OUT:-benches/results}"
mkdir -p "$out"
tsv="$out/steady-memory-$(date -u +%Y%m%d-%H%M%S).tsv"
work="$(mktemp -d)"
server=
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
secret=steady-memory-secret-0123456789abcdef
export JWT_SECRET=$secret SIGNING_KEY=$secret RUST_LOG=warn
token="$("$bin" token --tenant bench | tail -1)"
source "$(dirname "$(readlink -f "$0")")/serve-lib.sh"
port=18490
start_server "$bin" "$work" "$port" 0 "sqlite://$work/a.db?mode=rwc"
case "${LOAD:-list}" in
  list) list_body id "$work/request.json" ;;
  upload) upload_body 10240 c-1 "$work/request.json" ;;
  *) echo "LOAD is list or upload" >&2; exit 2 ;;
esac
clients=$([ "${LOAD:-list}" = upload ] && echo 16 || echo 32)
cat >"$work/request.lua" <<LUA
local f = assert(io.open("$work/request.json", "rb")); wrk.body = f:read("*a"); f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
LUA
printf 'round\trequests\treq_per_s\tserved_so_far\trss_mib\tdatabase_mib\n' | tee "$tsv"
served=0
for round in $(seq "$rounds"); do
  summary=$(taskset -c "${WRK_CPUS:-1}" wrk -t2 -c"$clients" -d"${seconds}s" -s "$work/request.lua" \
    "http://127.0.0.1:$port/graphql")
  requests=$(awk '/requests in/ { print $1 }' <<<"$summary")
  rate=$(awk '/^Requests\/sec/ { printf "%.0f", $2 }' <<<"$summary")
  served=$((served + requests))
  if [ "${SCRAPE:-0}" = 1 ]; then http "$port" GET /metrics >/dev/null; fi
  database=$(du -cm --apparent-size "$work"/a.db* | awk 'END { print $1 }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$requests" "$rate" "$served" "$(rss_mib)" "$database" | tee -a "$tsv"
done
echo "written: $tsv" >&2
