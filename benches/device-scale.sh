#!/usr/bin/env bash
# The whole scaling curve on the 16-core device machine, from the folder that
# benches/device-prepare.sh makes, as one command (about 5 minutes):
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
# A PostgreSQL left by an earlier run on this machine (cut at its time limit) holds
# the port and the data folder: stop it first.
if [ -f "$work/pgdata/postmaster.pid" ]; then
  kill "$(head -1 "$work/pgdata/postmaster.pid")" 2>/dev/null
  sleep 2
fi
rm -rf "$work"
mkdir -p "$work/bin" "$work/pg"
exec > >(tee -a "$out/device.log") 2>&1
{
  nproc; grep -m1 'model name' /proc/cpuinfo; cat /proc/version; df -h /tmp | tail -1
  ldd --version 2>&1 | head -1
  # Which cores share a physical one: the server's 0..N-1 and wrk's cores.
  for cpu in /sys/devices/system/cpu/cpu[0-9]*; do
    printf '%s siblings %s\n' "${cpu##*/}" "$(cat "$cpu/topology/thread_siblings_list" 2>/dev/null)"
  done
  grep '^cpu ' /proc/stat
} | tee "$out/machine.txt"
# gVisor (kernel "4.4.0") only records an affinity: `taskset` would not pin anything.
if [ "$(uname -r)" = 4.4.0 ]; then
  echo "WARNING: this kernel looks like gVisor's: taskset may not pin cores, the curve is not one"
fi

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
LABEL=sqlite CORES="${CORES_SQLITE:-1 2 4 8 12}" OUT="$out" bash "$carry/scale.sh" "$work/bin/attache"

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
# Its log in $OUT as it is written, so a run cut at the time limit keeps it.
touch "$out/postgres.log"
chown nobody "$out/postgres.log"
if as_nobody initdb -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$out/initdb.log" 2>&1 &&
  as_nobody taskset -c "$pg_cpus" timeout 60 pg_ctl -D "$data" -l "$out/postgres.log" -w -o \
    "-c listen_addresses=127.0.0.1 -p 5499 -c max_connections=300 -c shared_buffers=2GB -c unix_socket_directories=$work" \
    start; then
  # 32 pooled connections, logged: the default 10 could bound 8 cores by itself.
  export DATABASE_MAX_CONNECTIONS="${DATABASE_MAX_CONNECTIONS:-32}"
  echo "DATABASE_MAX_CONNECTIONS=$DATABASE_MAX_CONNECTIONS"
  LABEL=postgres POSTGRES=postgres://postgres@127.0.0.1:5499/postgres DB_CPUS="$pg_cpus" \
    CORES="${CORES_POSTGRES:-1 2 4 8}" CELLS='upload|list' OUT="$out" bash "$carry/scale.sh" "$work/bin/attache"
  as_nobody pg_ctl -D "$data" -m fast stop
else
  echo "PostgreSQL did not start: $(tail -5 "$out/initdb.log" "$out/postgres.log" 2>/dev/null)"
fi
ls "$out"
