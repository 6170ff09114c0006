#!/usr/bin/env bash
# attache's throughput as the cores it may use grow (issue 26), with the context
# switches each request costs. For every core count of CORES the release server
# starts on a fresh folder (SQLite and the local disk), pinned with `taskset` to
# cores 0..N-1, and `wrk`, pinned to WRK_CPUS, drives each cell for SECONDS_PER_CELL:
#   upload-10k (64 and 8 clients), list (64), upload-1m (32), download-1m (64).
# Every answer is checked: its HTTP status, and a GraphQL answer must hold what the
# cell asked for (an upload's id, a non-empty page) and no `errors` anywhere; a
# download's body is not read by Lua (a 1 MiB copy per answer would measure wrk).
# Bad answers and socket errors are columns of their own. The context switches are summed over /proc/PID/task/*/status
# (voluntary + involuntary) around each cell and divided by its requests. Where the
# bound lies: the CPU time of the server (/proc/PID/stat) as a share of the cores it
# was given and per request, and wrk's as a share of its own cores; a cell whose
# server is far from 100% while wrk is near it measures the load generator. The
# server's resident memory after each cell (one server serves every cell of a core
# count, and nothing scrapes it) shows memory that grows with the requests; the
# machine's iowait and steal (/proc/stat) show a disk or a hypervisor that bounds it.
# Each core count's files go once it ends (1 MiB uploads write gigabytes).
#   benches/scale.sh [target/release/attache]
#   CORES="1 2 4 8 12" WRK_CPUS=12-15 SECONDS_PER_CELL=8 CELLS=upload OUT=benches/results
#   POSTGRES=postgres://postgres@127.0.0.1:5432/postgres: PostgreSQL instead of SQLite,
#   a new database per core count (created and dropped through this URL, with psql);
#   db_cpu_pct is then the CPU of every `postgres` process as a share of DB_CPUS (the
#   cores PostgreSQL runs on, `taskset` syntax; all of them when unset).
# Prints a TSV and writes it to OUT/scale-DATE.tsv (scale-LABEL-DATE.tsv with LABEL). Needs wrk, taskset and bash
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
tsv="$out/scale${LABEL:+-$LABEL}-$(date -u +%Y%m%d-%H%M%S).tsv"
work="$(mktemp -d)"
server=
postgres="${POSTGRES:-}"
database= # the PostgreSQL database of the running core count
drop_database() {
  [ -n "$database" ] && timeout 60 psql -q "$postgres" -c "DROP DATABASE IF EXISTS $database" >/dev/null
  database=
}
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; sleep 0.5; drop_database; rm -rf "$work"; }
trap cleanup EXIT
secret=scale-benchmark-secret-0123456789abcdef
# A short grace: a server stopped between core counts must not eat the run's time.
export JWT_SECRET=$secret SIGNING_KEY=$secret RUST_LOG=warn SHUTDOWN_GRACE_SECONDS=2
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
-- GraphQL answers must hold EXPECT and no `errors`; without EXPECT (downloads) wrk
-- reads no body into Lua and counts statuses of 400 and up in errors.status.
local expect = os.getenv("EXPECT")
if expect and expect ~= "" then
  function response(status, headers, body)
    if status ~= 200 or not body:find(expect, 1, true) or body:find('"errors"', 1, true) then
      bad = bad + 1
    end
  end
end
function done(summary, latency, requests)
  local b = summary.errors.status
  for _, t in ipairs(threads) do b = b + (t:get("bad") or 0) end
  local e = summary.errors
  io.write(string.format("RESULT\t%d\t%.3f\t%.3f\t%.3f\t%d\t%d\n", summary.requests,
    summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000, b,
    e.connect + e.read + e.write + e.timeout))
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

machine_ticks() { # the machine's iowait and steal and all its CPU ticks so far
  awk '/^cpu / { total = 0; for (i = 2; i <= NF; i++) total += $i; print $6, $9, total }' /proc/stat
}

post() { # post BODY_FILE -> the answer
  http "$port" POST /graphql "$1"
}

cell() { # cell NAME CLIENTS URL [BODY EXPECT]
  [[ $1 =~ ${CELLS:-.} ]] || return 0
  local before after ticks db result machine
  before=$(switches)
  ticks=$(cpu_ticks)
  machine=$(machine_ticks)
  db_ticks >"$work/db.before"
  result=$( { time BODY=${4:-} EXPECT=${5:-} TOKEN=$token taskset -c "$wrk_cpus" wrk -t"$wrk_cores" -c"$2" \
    -d"${seconds}s" --timeout 10s -s "$work/check.lua" "$3"; } 2>"$work/wrk.time" | grep '^RESULT') || {
    echo "cell $1 on $cores cores: wrk gave no result: $(head -3 "$work/wrk.time")" >&2
    return 0
  }
  after=$(switches)
  ticks=$(($(cpu_ticks) - ticks))
  db=$(db_spent "$work/db.before")
  # RESULT requests seconds p50_ms p99_ms bad socket_errors, then wrk's user and
  # system seconds, then the machine's iowait, steal and total ticks before and now
  printf '%s\t%s\t%s\t%s\n' "$result" "$(tail -1 "$work/wrk.time" | tr ' ' '\t')" \
    "$(tr ' ' '\t' <<<"$machine")" "$(machine_ticks | tr ' ' '\t')" |
    awk -v cores="$cores" -v cell="$1" -v clients="$2" -v cs=$((after - before)) \
      -v cpu="$ticks" -v hz="$ticks_per_second" -v wrk_cores="$wrk_cores" \
      -v rss="$(rss_mib)" -v db="$db" -v db_cores="$db_cores" -v on_pg="${postgres:+1}" -F'\t' '{
      n = $2 > 0 ? $2 : 1; server = cpu / hz; all = $15 - $12 > 0 ? $15 - $12 : 1
      printf "%s\t%s\t%s\t%d\t%.0f\t%.2f\t%.2f\t%.2f\t%d\t%.0f\t%.3f\t%.0f\t%s\t%s\t%d\t%.1f\t%.1f\n",
        cores, cell, clients, $2, $2 / $3, $4, $5, cs / n, $6, 100 * server / ($3 * cores),
        1000 * server / n, 100 * ($8 + $9) / ($3 * wrk_cores), rss,
        on_pg ? sprintf("%.0f", 100 * db / hz / ($3 * db_cores)) : "-", $7,
        100 * ($13 - $10) / all, 100 * ($14 - $11) / all }' | tee -a "$tsv"
}

printf 'cores\tcell\tclients\trequests\treq_per_s\tp50_ms\tp99_ms\tswitches_per_request\tbad\tserver_cpu_pct\tserver_cpu_ms_per_request\twrk_cpu_pct\trss_mib\tdb_cpu_pct\tsocket_errors\tiowait_pct\tsteal_pct\n' | tee "$tsv"
for cores in $cores_list; do
  dir="$work/run-$cores"
  mkdir -p "$dir"
  port=$((18300 + cores))
  database_url="sqlite://$dir/a.db?mode=rwc"
  if [ -n "$postgres" ]; then
    database="attache_scale_$cores"
    timeout 60 psql -q "$postgres" -c "DROP DATABASE IF EXISTS $database" -c "CREATE DATABASE $database" >/dev/null
    database_url="${postgres%/*}/$database"
  fi
  start_server "$bin" "$dir" "$port" "0-$((cores - 1))" "$database_url"
  echo "$cores cores: $(df -h "$dir" | tail -1)" >&2
  # One file to download (a server that does not answer ends the run here), then
  # something to list and a warm-up.
  id=$(post "$download_body" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || { echo "no upload answered: $(tail -5 "$dir/server.log")" >&2; exit 1; }
  for _ in $(seq 25); do post "$small" >/dev/null; done
  url="http://127.0.0.1:$port/graphql"
  uploaded='"uploadAttachment":{"id":"' listed='"edges":[{"node":'
  cell upload-10k 64 "$url" "$small" "$uploaded"
  cell upload-10k 8 "$url" "$small" "$uploaded"
  cell list 64 "$url" "$work/list.json" "$listed"
  cell upload-1m 32 "$url" "$large" "$uploaded"
  cell download-1m 64 "http://127.0.0.1:$port/api/attachments/$id/download"
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=
  # What the server complained of, kept: its folder goes with the files.
  grep -E 'WARN|ERROR' "$dir/server.log" | head -20 | sed "s/^/$cores cores, server: /" >&2 || true
  drop_database
  rm -rf "$dir"
done
echo "written: $tsv" >&2
