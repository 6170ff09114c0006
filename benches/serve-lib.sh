# Sourced by the benchmark scripts (scale.sh, steady-memory.sh): the release server
# on a fresh folder and the bodies they send. Needs bash and taskset, not curl: HTTP
# goes over bash's /dev/tcp, so a bare machine (the device) runs them too.

# upload_body SIZE OWNER FILE: a JSON `uploadAttachment` of a SIZE-byte PDF for OWNER.
upload_body() {
  { printf '{"query":"mutation($i: UploadAttachmentInput!){ uploadAttachment(input:$i){ id } }","variables":{"i":{"ownerType":"contract","ownerId":"%s","filename":"a.pdf","base64":"' "$2"
    { printf '%%PDF-1.4\n'; head -c "$1" /dev/urandom; } | base64 -w0
    printf '"}}}'; } >"$3"
}

# list_body FIELDS FILE: `attachments(first: 20)` of owner c-1, each node's FIELDS.
list_body() {
  printf '{"query":"{ attachments(ownerType: \\"contract\\", ownerId: \\"c-1\\", first: 20) { edges { node { %s } } } }"}' "$1" >"$2"
}

# start_server BIN DIR PORT CPUS DATABASE_URL: `serve` with its files in DIR and its log
# in DIR/server.log, pinned to CPUS (taskset syntax); sets `server` to its pid and
# returns once it listens.
start_server() {
  DATABASE_URL="$5" STORAGE_ROOT="$2/files" \
    LISTEN_ADDR="127.0.0.1:$3" PUBLIC_BASE_URL="http://127.0.0.1:$3" \
    taskset -c "$4" "$1" serve >"$2/server.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$3") 2>/dev/null && return 0; sleep 0.1; done
  echo "the server did not listen: $(tail -5 "$2/server.log")" >&2
  return 1
}

# http PORT METHOD PATH [BODY_FILE]: the whole answer, headers and body (the token
# in `token`), over one connection that the server closes.
http() {
  local length=0
  [ -n "${4:-}" ] && length=$(stat -c %s "$4")
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  printf '%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n' \
    "$2" "$3" "$token" "$length" >&3
  if [ -n "${4:-}" ]; then cat "$4" >&3; fi
  timeout 30 cat <&3
  exec 3<&-
}

rss_mib() { # the server's resident memory now
  awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' /proc/"$server"/status
}
