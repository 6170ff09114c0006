#!/usr/bin/env bash
# Start a throwaway single-node Garage S3 server in a folder of its own.
#
# Usage: tests/garage/start.sh DIR
#
# DIR must not exist yet or be empty. On success, once the bucket answers a signed
# ListObjectsV2, prints these lines on stdout and exits 0, leaving Garage running:
#
#   GARAGE_ENDPOINT=http://127.0.0.1:PORT
#   GARAGE_REGION=us-east-1
#   GARAGE_ACCESS_KEY=GK...
#   GARAGE_SECRET_KEY=...
#   GARAGE_BUCKET=attache-test
#   GARAGE_PID=...
#   GARAGE_CONFIG=DIR/garage.toml
#   GARAGE_LOG=DIR/garage.log
#
# Stop it with `kill -KILL "$GARAGE_PID"` (the folder is throwaway; SIGTERM works too
# but takes 2 to 4 s). On failure, prints why on stderr and exits non-zero
# within GARAGE_START_TIMEOUT seconds (default 30), leaving nothing running.
#
# Optional environment:
#   GARAGE_BIN            the garage binary (default: `garage` on PATH, else ~/.cargo/bin/garage)
#   GARAGE_REGION         the S3 region Garage checks in signatures (default us-east-1)
#   GARAGE_BUCKET         the bucket to create (default attache-test)
#   GARAGE_START_TIMEOUT  seconds before giving up (default 30)
#   GARAGE_WATCH_PID      if set, Garage is killed once this process has exited
#                         (e.g. the test binary's own pid), so a crashed run leaves no server
#
# Each run picks its own free ports, so many can run in parallel (one folder each).
# Needs bash, curl >= 7.75 (for --aws-sigv4) and od.
set -euo pipefail

die() {
    printf 'garage/start.sh: %s\n' "$*" >&2
    exit 1
}

[[ $# -eq 1 && -n $1 ]] || die "usage: $0 DIR"
dir=$1
mkdir -p "$dir" || die "cannot create $dir"
dir=$(cd "$dir" && pwd)
[[ -z $(ls -A "$dir") ]] || die "$dir is not empty: give each Garage a fresh folder"

bin=${GARAGE_BIN:-}
if [[ -z $bin ]]; then
    if command -v garage >/dev/null 2>&1; then
        bin=$(command -v garage)
    elif [[ -x ${HOME:-/root}/.cargo/bin/garage ]]; then
        bin=${HOME:-/root}/.cargo/bin/garage
    else
        die "garage not found: cargo install garage --version 2.5.0 --locked --no-default-features --features bundled-libs,lmdb"
    fi
fi
[[ -x $bin ]] || die "GARAGE_BIN=$bin is not executable"
command -v curl >/dev/null 2>&1 || die "curl not found"

region=${GARAGE_REGION:-us-east-1}
bucket=${GARAGE_BUCKET:-attache-test}
timeout=${GARAGE_START_TIMEOUT:-30}
deadline=$((SECONDS + timeout))

hex() {
    od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'
}

# A random port below the kernel's ephemeral range (so it cannot collide with the
# 127.0.0.1:0 listeners and outgoing connections of the tests) that nobody listens on.
read -r ephemeral_low _ </proc/sys/net/ipv4/ip_local_port_range || ephemeral_low=32768
port_low=10000
port_high=$((ephemeral_low - 1))
((port_high > port_low + 1000)) || port_high=30000
pick_port() {
    local port
    while :; do
        port=$((port_low + (RANDOM * 32768 + RANDOM) % (port_high - port_low)))
        # Something answers: taken. (The subshell keeps the fd out of this shell.)
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            printf '%s\n' "$port"
            return
        fi
    done
}

access_key=GK$(hex 12)
secret_key=$(hex 32)
rpc_secret=$(hex 32)
empty_sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
config=$dir/garage.toml
log=$dir/garage.log
pid=

stop_garage() {
    if [[ -n $pid ]]; then
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.02; done
        pid=
    fi
}
trap 'stop_garage' EXIT

# Prints the HTTP status of a signed ListObjectsV2 on the bucket: "refused" if nobody
# listens yet, "none" if something listens but gives no HTTP answer.
probe() {
    local status rc=0 max_time=$((deadline - SECONDS))
    ((max_time <= 5)) || max_time=5
    ((max_time >= 1)) || max_time=1
    status=$(curl -s -o /dev/null -w '%{http_code}' --max-time "$max_time" \
        --aws-sigv4 "aws:amz:$region:s3" --user "$access_key:$secret_key" \
        -H "x-amz-content-sha256: $empty_sha256" \
        "http://127.0.0.1:$1/$bucket?list-type=2&max-keys=1") || rc=$?
    case $rc in
    0) printf '%s\n' "$status" ;;
    7) printf 'refused\n' ;;
    *) printf 'none\n' ;;
    esac
}

attempt=0
while :; do
    attempt=$((attempt + 1))
    ((SECONDS < deadline)) || die "no usable Garage within ${timeout}s after $((attempt - 1)) attempt(s); see $log"
    s3_port=$(pick_port)
    rpc_port=$(pick_port)
    [[ $s3_port != "$rpc_port" ]] || continue
    rm -rf "$dir/meta" "$dir/data"
    cat >"$config" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
compression_level = "none"
disable_scrub = true
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$rpc_secret"

[s3_api]
api_bind_addr = "127.0.0.1:$s3_port"
s3_region = "$region"
EOF
    chmod 600 "$config"

    # --single-node applies a one-node layout; --default-bucket creates the key and the
    # bucket from these variables (and grants read, write, owner), all before the S3 API
    # starts listening: once our key gets an answer, the bucket is usable.
    # The log settings are Garage's defaults, fixed so that a caller's RUST_LOG or
    # GARAGE_LOG_* cannot hide the line waited for below.
    env -u GARAGE_LOG_TO_SYSLOG -u GARAGE_LOG_TO_JOURNALD -u GARAGE_LOG_FORMAT \
        RUST_LOG=netapp=info,garage=info NO_COLOR=1 \
        GARAGE_DEFAULT_ACCESS_KEY="$access_key" GARAGE_DEFAULT_SECRET_KEY="$secret_key" \
        GARAGE_DEFAULT_BUCKET="$bucket" \
        "$bin" -c "$config" server --single-node --default-bucket \
        </dev/null >"$log" 2>&1 &
    pid=$!
    # `env` execs Garage, so this is Garage's pid. Disowned: no "Aborted" notice from bash
    # if it dies (bash still reaps it, so `kill -0` below sees it gone).
    disown "$pid"

    retry=
    attempt_deadline=$((SECONDS + 10))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            pid=
            # A port taken in between makes Garage abort: try other ports.
            if grep -qi 'address already in use\|AddrInUse' "$log"; then
                retry=1
                break
            fi
            tail -n 20 "$log" >&2
            die "garage exited during startup; see $log"
        fi
        # Garage logs this line once its RPC port is bound (if that bind fails it aborts,
        # possibly after the S3 API has already answered).
        if grep -q "Listening on 127.0.0.1:$rpc_port" "$log"; then
            status=$(probe "$s3_port")
        else
            status=refused
        fi
        case $status in
        2??) kill -0 "$pid" 2>/dev/null && break ;;
        refused) ;; # not listening yet
        *)
            # Someone else holds this port (Garage logs "listening" before it binds and
            # does not exit when the S3 bind fails; our fresh key gets 2xx from ours
            # only): try other ports.
            retry=1
            break
            ;;
        esac
        if ((SECONDS >= attempt_deadline || SECONDS >= deadline)); then
            retry=1
            break
        fi
        sleep 0.05
    done
    if [[ -n $retry ]]; then
        stop_garage
        cp "$log" "$dir/garage.attempt$attempt.log" 2>/dev/null || true
        continue
    fi
    break
done

if [[ -n ${GARAGE_WATCH_PID:-} ]]; then
    watch_pid=$GARAGE_WATCH_PID
    garage_pid=$pid
    (
        # Alive and not a zombie (a dead process that its parent has not reaped yet).
        alive() {
            local stat
            stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
            stat=${stat##*) }
            [[ ${stat%% *} != Z ]]
        }
        while alive "$watch_pid" && alive "$garage_pid"; do
            sleep 1
        done
        kill -KILL "$garage_pid" 2>/dev/null || true
    ) </dev/null >/dev/null 2>&1 &
fi

trap - EXIT
printf '%s\n' \
    "GARAGE_ENDPOINT=http://127.0.0.1:$s3_port" \
    "GARAGE_REGION=$region" \
    "GARAGE_ACCESS_KEY=$access_key" \
    "GARAGE_SECRET_KEY=$secret_key" \
    "GARAGE_BUCKET=$bucket" \
    "GARAGE_PID=$pid" \
    "GARAGE_CONFIG=$config" \
    "GARAGE_LOG=$log"
