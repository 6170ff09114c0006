#!/usr/bin/env bash
# attache's throughput as the cores it may use grow (issue 26), with the context
# switches each request costs. For every core count of CORES the release server
# starts on a fresh folder (SQLite and the local disk), pinned with `taskset` to
# cores 0..N-1, and `wrk`, pinned to WRK_CPUS, drives each cell for SECONDS_PER_CELL:
#   upload-10k (64 and 8 clients), list (64), upload-1m (32), download-1m (64).
# Every answer is checked (HTTP status, no GraphQL `errors`); a cell with a bad
# answer is marked. The context switches are summed over /proc/PID/task/*/status
# (voluntary + involuntary) around each cell and divided by its requests. Where the
# bound lies: the CPU time of the server (/proc/PID/stat) as a share of the cores it
# was given and per request, and wrk's as a share of its own cores; a cell whose
# server is far from 100% while wrk is near it measures the load generator. The
# server's resident memory after each cell (one server serves every cell of a core
# count, and nothing scrapes it) shows memory that grows with the requests.
#   benches/scale.sh [target/release/attache]
#   CORES="1 2 4 8 12" WRK_CPUS=12-15 SECONDS_PER_CELL=8 CELLS=upload OUT=benches/results
#   POSTGRES=postgres://postgres@127.0.0.1:5432/postgres: PostgreSQL instead of SQLite,
#   a new database per core count (created and dropped through this URL, with psql);
#   db_cpu_pct is then the CPU of every `postgres` process as a share of DB_CPUS (the
#   cores PostgreSQL runs on, `taskset` syntax; all of them when unset).
# Prints a TSV and writes it to OUT/scale-DATE.tsv. Needs wrk, taskset and bash
# (serve-lib.sh beside it: HTTP over bash's /dev/tcp, no curl). On a 2-core
# machine: CORES=1 WRK_CPUS=1 (the load generator shares the second core).
set -euo pipefail
trap 'echo "scale.sh: line $LINENO failed" >&2' ERR
bin="$(readlink -f "${1:-target/release/attache}")"
cores_list="${CORES:-1 2}"
wrk_cpus="${WRK_CPUS:-1}"
seconds="${SECONDS_PER_CELL:-8}"
out="${OUT:-benches/results}"
mkdir -p "$out"
tsv="$out/scale-$(date -u +%Y%m%d-%H%M%S).tsv"
work="$(mktemp -d)"
server=
postgres="${POSTGRES:-}"
database= # the PostgreSQL database of the running core count
drop_database() {
  [ -n "$database" ] && psql -q "$postgres" -c "DROP DATABASE IF EXISTS $database" >/dev/null
  database=
}
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; sleep 0.5; drop_database; rm -rf "$work"; }
trap cleanup EXIT
secret=scale-benchmark-secret-0123456789abcdef
export JWT_SECRET=$secret SIGNING_KEY=$secret RUST_LOG=warn
token="$("$bin" token --tenant bench | tail -1)"
source "$(dirname "$(readlink -f "$0")")/serve-lib.sh"

small="$work/small.json" large="$work/large.json" download_body="$work/download.json"
upload_body 10240 c-1 "$small"
upload_body 1048576 c-1 "$large"
upload_body 1048576 c-2 "$download_body"
list_body "id filename byteSize url" "$work/list.json"

cat >"$work/check.lua" <<'LUA'
local path = os.getenv("BODY")
if path and path ~= "" then
  local f = assert(io.open(path, "rb")); wrk.body = f:read("*a"); f:close(); wrk.method = "POST"
end
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
bad = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  if status ~= 200 or body:sub(1, 12):find('"errors"', 1, true) then bad = bad + 1 end
end
function done(summary, latency, requests)
  local b = summary.errors.status
  for _, t in ipairs(threads) do b = b + (t:get("bad") or 0) end
  io.write(string.format("RESULT\t%d\t%.3f\t%.3f\t%.3f\t%d\n", summary.requests,
    summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000, b))
end
LUA

db_ticks() { # PID and user + system CPU ticks of each PostgreSQL process now alive
  [ -n "$postgres" ] || return 0
  local comm
  for comm in /proc/[0-9]*/comm; do
    if [ "$(cat "$comm" 2>/dev/null)" = postgres ]; then cat "${comm%comm}stat" 2>/dev/null || true; fi
  done | awk '{ print $1, $14 + $15 }'
}
db_spent() { # CPU ticks PostgreSQL spent since the snapshot in file $1 (new processes whole)
  db_ticks | awk 'NR == FNR { before[$1] = $2; next } { n += $2 - before[$1] } END { print n + 0 }' "$1" -
}
db_cores=$(if [ -n "${DB_CPUS:-}" ]; then taskset -c "$DB_CPUS" nproc; else nproc --all; fi)

cpu_ticks() { # user + system CPU time of the server so far, in clock ticks
  awk '{ print $14 + $15 }' /proc/"$server"/stat
}
ticks_per_second=$(getconf CLK_TCK)
TIMEFORMAT='%U %S' # what `time` prints of wrk: its user and system seconds
wrk_cores=$(taskset -c "$wrk_cpus" nproc)

switches() { # context switches of every thread of the server so far
  { cat /proc/"$server"/task/*/status 2>/dev/null || true; } | # threads come and go
    awk '/^(voluntary|nonvoluntary)_ctxt_switches/ { n += $2 } END { print n + 0 }'
}

post() { # post BODY_FILE -> the answer
  http "$port" POST /graphql "$1"
}

cell() { # cell NAME CLIENTS URL [BODY]
  [[ $1 =~ ${CELLS:-.} ]] || return 0
  local before after ticks db result
  before=$(switches)
  ticks=$(cpu_ticks)
  db_ticks >"$work/db.before"
  result=$( { time BODY=${4:-} TOKEN=$token taskset -c "$wrk_cpus" wrk -t"$wrk_cores" -c"$2" \
    -d"${seconds}s" --timeout 10s -s "$work/check.lua" "$3"; } 2>"$work/wrk.time" | grep '^RESULT') || {
    echo "cell $1 on $cores cores: wrk gave no result: $(head -3 "$work/wrk.time")" >&2
    return 0
  }
  after=$(switches)
  ticks=$(($(cpu_ticks) - ticks))
  db=$(db_spent "$work/db.before")
  # RESULT requests seconds p50_ms p99_ms bad, then wrk's user and system seconds
  printf '%s\t%s\n' "$result" "$(tail -1 "$work/wrk.time" | tr ' ' '\t')" |
    awk -v cores="$cores" -v cell="$1" -v clients="$2" -v cs=$((after - before)) \
      -v cpu="$ticks" -v hz="$ticks_per_second" -v wrk_cores="$wrk_cores" \
      -v rss="$(rss_mib)" -v db="$db" -v db_cores="$db_cores" -v on_pg="${postgres:+1}" -F'\t' '{
      n = $2 > 0 ? $2 : 1; server = cpu / hz
      printf "%s\t%s\t%s\t%d\t%.0f\t%.2f\t%.2f\t%.2f\t%d\t%.0f\t%.3f\t%.0f\t%s\t%s\n", cores, cell, clients,
        $2, $2 / $3, $4, $5, cs / n, $6, 100 * server / ($3 * cores), 1000 * server / n,
        100 * ($7 + $8) / ($3 * wrk_cores), rss,
        on_pg ? sprintf("%.0f", 100 * db / hz / ($3 * db_cores)) : "-" }' | tee -a "$tsv"
}

printf 'cores\tcell\tclients\trequests\treq_per_s\tp50_ms\tp99_ms\tswitches_per_request\tbad\tserver_cpu_pct\tserver_cpu_ms_per_request\twrk_cpu_pct\trss_mib\tdb_cpu_pct\n' | tee "$tsv"
for cores in $cores_list; do
  dir="$work/run-$cores"
  mkdir -p "$dir"
  port=$((18300 + cores))
  database_url="sqlite://$dir/a.db?mode=rwc"
  if [ -n "$postgres" ]; then
    database="attache_scale_$cores"
    psql -q "$postgres" -c "DROP DATABASE IF EXISTS $database" -c "CREATE DATABASE $database" >/dev/null
    database_url="${postgres%/*}/$database"
  fi
  start_server "$bin" "$dir" "$port" "0-$((cores - 1))" "$database_url"
  # Something to list and one file to download, then a warm-up.
  for _ in $(seq 25); do post "$small" >/dev/null; done
  id=$(post "$download_body" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || { echo "no upload answered: $(tail -5 "$dir/server.log")" >&2; exit 1; }
  url="http://127.0.0.1:$port/graphql"
  cell upload-10k 64 "$url" "$small"
  cell upload-10k 8 "$url" "$small"
  cell list 64 "$url" "$work/list.json"
  cell upload-1m 32 "$url" "$large"
  cell download-1m 64 "http://127.0.0.1:$port/api/attachments/$id/download"
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=
  drop_database
done
echo "written: $tsv" >&2
