#!/usr/bin/env bash
# Makes the folder to carry to the 16-core device machine, where nothing can be
# fetched, PostgreSQL is not installed and commands run as root, for the whole
# scaling curve (issue 26) on SQLite and on PostgreSQL in one command:
#   bash benches/device-prepare.sh [target/release/attache] [target/scale-carry]
#   device tool: carry ["target/scale-carry"], kind nvidia-h100-x1, timeout_s 480,
#     command: bash target/scale-carry/device-scale.sh
# The folder (about 35 MiB; the device takes 64 with the working tree): attache
# stripped and compressed, wrk and its libraries, PostgreSQL's server, initdb,
# pg_ctl and psql with their libraries, share folder and the UTC zone, compressed,
# and the scripts, scale.sh (with serve-lib.sh) and device-scale.sh. Needs wrk, PostgreSQL (any
# version under /usr/lib/postgresql), xz and strip here.
set -euo pipefail
bin="$(readlink -f "${1:-target/release/attache}")"
dir="${2:-target/scale-carry}"
benches="$(dirname "$(readlink -f "$0")")"
rm -rf "$dir"
mkdir -p "$dir/lib"
strip -o "$dir/attache" "$bin"
xz -T0 -6 "$dir/attache"

wrk="$(command -v wrk)" || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
cp "$wrk" "$dir/wrk"
ldd "$wrk" | awk '/=>/ { print $3 }' | grep -E 'luajit|libssl|libcrypto' | xargs -I{} cp -L {} "$dir/lib/"

# PostgreSQL at its own paths under a root of its own: its programs find their share
# folder and modules by the path from their own folder, so the tree moves as a whole.
pg_bin="$(find /usr/lib/postgresql -maxdepth 2 -name bin | sort -V | tail -1)"
pg="${pg_bin%/bin}"
version="${pg##*/}"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root$pg/bin" "$root$pg/lib" "$root/usr/share/postgresql/$version" "$root/lib" "$root/zoneinfo"
cp "$pg_bin"/{postgres,initdb,pg_ctl,psql} "$root$pg/bin/"
cp "$pg/lib"/{plpgsql.so,dict_snowball.so} "$root$pg/lib/"
share="/usr/share/postgresql/$version"
(cd "$share" && cp -r --parents $(ls | grep -vE '^(man|contrib|extension)$') "$root$share/")
mkdir -p "$root$share/extension"
cp "$share"/extension/plpgsql* "$root$share/extension/"
cp /usr/share/zoneinfo/UTC "$root/zoneinfo/"
# Every library they load but the C library's own, which the machine has.
for program in "$root$pg"/bin/* "$root$pg"/lib/*.so; do ldd "$program"; done |
  awk '/=>/ { print $3 }' | sort -u |
  grep -vE '/(libc|libm|libpthread|libdl|librt|libresolv|ld-linux[^/]*)\.so' |
  xargs -I{} cp -L {} "$root/lib/"
chmod 755 "$root"
tar -C "$root" -cJf "$dir/postgres.tar.xz" .

cp "$benches/scale.sh" "$benches/serve-lib.sh" "$benches/device-scale.sh" "$dir/"
du -sh "$dir"
# The device takes 64 MiB with the working tree.
[ "$(du -sm "$dir" | cut -f1)" -le 56 ] || { echo "the folder is over 56 MiB" >&2; exit 1; }
