#!/usr/bin/env bash
# The whole scaling curve on the 16-core device machine, from the folder that
# benches/device-prepare.sh makes, as one command (about 6 minutes):
#   1. SQLite and the local disk: the server on 1, 2, 4, 8 and 12 cores, wrk on 12-15;
#   2. PostgreSQL, pinned to cores 8-11: the server on 1, 2, 4 and 8 cores, uploads
#      and the listing.
# MAX_CONCURRENT_UPLOADS=64 (as in the issue's table), SECONDS_PER_CELL=6. Writes
# both TSVs, the machine's description and the logs to $OUT (or the folder's
# results/). CORES_SQLITE, CORES_POSTGRES, POSTGRES_CPUS and WRK_CPUS narrow or move a run (on a
# 2-core machine: CORES_SQLITE=1 CORES_POSTGRES=1 POSTGRES_CPUS=1 WRK_CPUS=1).
set -uo pipefail
carry="$(dirname "$(readlink -f "$0")")"
out="${OUT:-$carry/results}"
mkdir -p "$out"
work=/tmp/attache-device
rm -rf "$work"
mkdir -p "$work/bin" "$work/pg"
exec > >(tee -a "$out/device.log") 2>&1
{ nproc; grep -m1 'model name' /proc/cpuinfo; uname -r; df -h /tmp | tail -1; } | tee "$out/machine.txt"

python3 - "$carry" "$work" <<'PY'
import lzma, shutil, sys, tarfile
carry, work = sys.argv[1], sys.argv[2]
with lzma.open(f"{carry}/attache.xz") as src, open(f"{work}/bin/attache", "wb") as dst:
    shutil.copyfileobj(src, dst)
with tarfile.open(f"{carry}/postgres.tar.xz") as tar:
    if hasattr(tarfile, "tar_filter"):
        tar.extractall(f"{work}/pg", filter="tar")
    else:
        tar.extractall(f"{work}/pg")
PY
chmod +x "$work/bin/attache"
chmod -R a+rX "$work/pg"
# The carried libraries only for the carried programs: the machine's own keep theirs.
wrap() { # wrap NAME PROGRAM LIBRARIES
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$3" "$2" >"$work/bin/$1"
  chmod +x "$work/bin/$1"
}
wrap wrk "$carry/wrk" "$carry/lib"
pg_bin="$(find "$work/pg/usr/lib/postgresql" -maxdepth 2 -name bin | head -1)"
for program in initdb pg_ctl psql; do wrap "$program" "$pg_bin/$program" "$work/pg/lib"; done
export PATH="$work/bin:$PATH"
[ -e /usr/share/zoneinfo/UTC ] || { mkdir -p /usr/share/zoneinfo && cp "$work/pg/zoneinfo/UTC" /usr/share/zoneinfo/; }
export TZ=UTC MAX_CONCURRENT_UPLOADS="${MAX_CONCURRENT_UPLOADS:-64}" SECONDS_PER_CELL="${SECONDS_PER_CELL:-6}"
export WRK_CPUS="${WRK_CPUS:-12-15}"

echo "== SQLite"
CORES="${CORES_SQLITE:-1 2 4 8 12}" OUT="$out" bash "$carry/scale.sh" "$work/bin/attache"

echo "== PostgreSQL"
# PostgreSQL refuses to run as root: its data folder and processes are nobody's.
data="$work/pgdata"
mkdir -p "$data"
chown nobody "$data" "$work"
as_nobody() {
  if command -v setpriv >/dev/null; then
    setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups -- "$@"
  else
    runuser -u nobody -- "$@"
  fi
}
pg_cpus="${POSTGRES_CPUS:-8-11}"
if as_nobody initdb -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$out/initdb.log" 2>&1 &&
  as_nobody taskset -c "$pg_cpus" pg_ctl -D "$data" -l "$work/postgres.log" -w -o \
    "-c listen_addresses=127.0.0.1 -p 5499 -c max_connections=300 -c shared_buffers=2GB -c unix_socket_directories=$work" \
    start; then
  POSTGRES=postgres://postgres@127.0.0.1:5499/postgres DB_CPUS="$pg_cpus" \
    CORES="${CORES_POSTGRES:-1 2 4 8}" CELLS='upload|list' OUT="$out" bash "$carry/scale.sh" "$work/bin/attache"
  as_nobody pg_ctl -D "$data" -m fast stop
else
  echo "PostgreSQL did not start: $(tail -5 "$out/initdb.log" "$work/postgres.log" 2>/dev/null)"
fi
cp "$work/postgres.log" "$out/" 2>/dev/null
ls "$out"
