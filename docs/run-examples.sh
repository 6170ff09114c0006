#!/usr/bin/env bash
# Runs the examples of README.md and docs/*.md against a fresh attache server, so that
# what the documentation shows is what attache does. From the repository root:
#
#   bash docs/run-examples.sh target/debug/attache
#
# Which blocks run: the info string of a fenced code block says it.
#
#   ```sh run                    a shell snippet, run by bash with `set -euo pipefail`;
#                                a line that starts with a curl printing `%{http_code}`
#                                and has a comment `# NNN` must answer NNN
#   ```sh run errors-ok          the same, but the GraphQL errors it shows are on purpose
#   ```graphql run               a GraphQL document, POSTed to /graphql with the token:
#                                its answer must carry `data` and no `errors`
#   ```graphql run expect=CODE   its answer must carry an error whose extensions.code is CODE
#   ```LANG save=NAME            saved as the file NAME, for the shell blocks after it
#   ```LANG file=PATH            a copy of the repository file PATH (which another suite
#                                runs): it must stay byte for byte the same
#
# Every other block is only shown: a placeholder to fill in, a server that runs until
# stopped, another machine (Docker, S3, a proxy).
#
# How they run: one `attache serve` for the whole run, in development mode (every
# variable `attache serve --help` lists is unset, but LISTEN_ADDR=127.0.0.1:0 and a
# temporary DATABASE_URL and STORAGE_ROOT). Each Markdown file runs in a bash of its
# own, in a new empty folder, its blocks in order: a block may use what an earlier
# block of the same file left (variables, files). The blocks see
#   BASE     the server's origin, http://127.0.0.1:PORT (README's quick start sets it)
#   TOKEN    the development token the server printed (the quick start has it copied)
#   ATTACHE  the binary; `attache` is also on PATH
#   DATABASE_URL, STORAGE_ROOT  the server's, so `attache backup create` and the like
#            act on its database and files
# In shell blocks `curl` is wrapped: an answer of a /graphql URL that carries GraphQL
# `errors` fails the block, unless it is tagged errors-ok.
#
# Also checked: README.md has at most 250 lines; every variable `attache serve --help`
# lists is in docs/configuration.md; relative links lead to files of the repository
# and to headings that exist; no path of a build machine; a run tag on another
# language is a mistake. At the end the server must stop on SIGTERM with status 0.
# Needs bash 4, curl, jq, base64, sha256sum and openssl (which the blocks use).
# Exit status: 0 when every check passed.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: bash docs/run-examples.sh path/to/attache" >&2
  exit 2
fi
bin=$(realpath -e -- "$1" 2>/dev/null) || { echo "run-examples: no such file: $1" >&2; exit 2; }
[ -x "$bin" ] || { echo "run-examples: not executable: $bin" >&2; exit 2; }
for tool in curl jq base64 sha256sum openssl; do
  command -v "$tool" >/dev/null || { echo "run-examples: $tool is needed" >&2; exit 2; }
done
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

failures=0
fail() { echo "FAILED  $*" >&2; failures=$((failures + 1)); }
ok() { echo "ok      $*"; }

# --- The functions the blocks' shells get (exported to them). ---------------------

# The block about to run: shown, recorded (so a failure can name it), its options set.
examples_block() { # examples_block WHERE [errors-ok]
  printf '%s\n' "$1" >"$EXAMPLES_STATE/current"
  printf -- '\n--> %s\n' "$1"
  if [ "${2:-}" = errors-ok ]; then EXAMPLES_ERRORS_OK=1; else EXAMPLES_ERRORS_OK=; fi
}

# Whether a curl command line names a /graphql URL.
examples_names_graphql() {
  local arg
  for arg in "$@"; do
    case $arg in
      http://*/graphql | https://*/graphql | http://*/graphql\?* | https://*/graphql\?*) return 0 ;;
    esac
  done
  return 1
}

# curl as the blocks call it; an answer of /graphql carrying `errors` fails, and so
# does a status other than EXAMPLES_EXPECT_STATUS (set for a line that starts with
# such a curl and has a comment `# NNN`).
curl() {
  local answer status=0
  answer=$(mktemp "$EXAMPLES_STATE/answer.XXXXXX")
  command curl "$@" >"$answer" || status=$?
  cat "$answer"
  if [ "$status" -eq 0 ] && [ -n "${EXAMPLES_EXPECT_STATUS:-}" ] &&
    [ "$(tr -d '\n' <"$answer")" != "$EXAMPLES_EXPECT_STATUS" ]; then
    printf 'run-examples: expected HTTP %s, as the comment says\n' "$EXAMPLES_EXPECT_STATUS" >&2
    status=1
  fi
  if [ "$status" -eq 0 ] && [ -z "${EXAMPLES_ERRORS_OK:-}" ] && examples_names_graphql "$@" &&
    jq -e 'type == "object" and ((.errors // []) | length > 0)' "$answer" >/dev/null 2>&1; then
    printf '\nrun-examples: that answer carries GraphQL errors (tag the block errors-ok if they are on purpose)\n' >&2
    status=1
  fi
  rm -f "$answer"
  return "$status"
}

# A `graphql run` block: POST the document, check the answer.
examples_graphql() { # examples_graphql FILE [CODE]
  local answer expected=${2:-}
  answer=$(jq -Rs '{query: .}' "$1" |
    command curl -sS "$BASE/graphql" -H "Authorization: Bearer $TOKEN" \
      -H 'Content-Type: application/json' --data-binary @-)
  printf '%s\n' "$answer"
  if [ -z "$expected" ]; then
    jq -e '((.errors // []) | length == 0) and .data != null' >/dev/null <<<"$answer" ||
      { echo "run-examples: expected data and no errors" >&2; return 1; }
  else
    jq -e --arg code "$expected" '[.errors[]?.extensions.code] | index($code) != null' >/dev/null <<<"$answer" ||
      { echo "run-examples: expected an error with code $expected" >&2; return 1; }
  fi
}
export -f examples_block examples_names_graphql curl examples_graphql

# --- Extract the blocks. ----------------------------------------------------------

tmp=$(mktemp -d "${TMPDIR:-/tmp}/attache-examples.XXXXXX")
server_pid=
stop_server() { # SIGTERM; fails unless the server exits with status 0 within 10 s
  [ -n "$server_pid" ] || return 0
  local pid=$server_pid status=0
  server_pid=
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "run-examples: the server did not stop within 10 s of SIGTERM" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || status=$?
  [ "$status" -eq 0 ] || echo "run-examples: the server exited with status $status" >&2
  return "$status"
}
cleanup() {
  stop_server || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

docs=(README.md docs/*.md)

# One line per block of interest, tab-separated: DOC LINE KIND FILE OPTION
#   KIND sh, graphql, save (OPTION: the name), file (OPTION: the repository path),
#   or bad (OPTION: why). The block's text is in FILE (indentation of its fence removed).
extract() { # extract INDEX DOC
  awk -v dir="$tmp/blocks" -v doc="$2" -v index_="$1" '
    function emit(kind, option) {
      n++
      out = sprintf("%s/%s-%03d", dir, index_, n)
      printf "" > out
      printf "%s\t%d\t%s\t%s\t%s\n", doc, FNR, kind, out, option
    }
    !open && /^ *```/ {
      match($0, /^ */)
      indent = RLENGTH
      info = substr($0, indent + 4)
      words = split(info, w, /[ \t]+/)
      open = 1
      out = ""
      shell = 0
      if (w[2] == "run") {
        if (w[1] == "sh") {
          extra = ""
          for (i = 3; i <= words; i++) {
            if (w[i] == "errors-ok") extra = "errors-ok"
            else { emit("bad", "unknown option " w[i]); out = ""; next }
          }
          emit("sh", extra)
          shell = 1
        } else if (w[1] == "graphql") {
          code = ""
          for (i = 3; i <= words; i++) {
            if (w[i] ~ /^expect=[A-Z_]+$/) code = substr(w[i], 8)
            else { emit("bad", "unknown option " w[i]); out = ""; next }
          }
          emit("graphql", code)
        } else {
          emit("bad", "only sh and graphql blocks run (```" info ")")
          out = ""
        }
        next
      }
      for (i = 2; i <= words; i++) {
        if (w[i] ~ /^save=[A-Za-z0-9_.-]+$/) { emit("save", substr(w[i], 6)); break }
        if (w[i] ~ /^file=/) { emit("file", substr(w[i], 6)); break }
      }
      next
    }
    open && /^ *```[ \t]*$/ { open = 0; out = ""; next }
    open && out != "" {
      line = $0
      for (i = 0; i < indent && substr(line, 1, 1) == " "; i++) line = substr(line, 2)
      # A status the comment promises is checked.
      if (shell && line ~ /^curl .*%\{http_code\}/ && match(line, /# [0-9][0-9][0-9]([^0-9]|$)/))
        line = "EXAMPLES_EXPECT_STATUS=" substr(line, RSTART + 2, 3) " " line
      print line > out
    }
    END { if (open) printf "%s\t%d\tbad\t-\ta code block is not closed\n", doc, FNR }
  ' "$2"
}

mkdir -p "$tmp/blocks"
manifest="$tmp/manifest.tsv"
: >"$manifest"
for i in "${!docs[@]}"; do
  extract "$i" "${docs[$i]}" >>"$manifest"
done

# --- Checks that need no server. --------------------------------------------------

echo "==> documentation checks"
readme_lines=$(wc -l <README.md)
if [ "$readme_lines" -le 250 ]; then
  ok "README.md has $readme_lines lines (at most 250)"
else
  fail "README.md has $readme_lines lines: at most 250, the rest goes to docs/"
fi

missing=()
while IFS= read -r variable; do
  grep -q "\`$variable\`" docs/configuration.md || missing+=("$variable")
done < <("$bin" serve --help | grep -o '\[env: [A-Z0-9_]*' | sed 's/\[env: //' | sort -u)
if [ ${#missing[@]} -eq 0 ]; then
  ok "docs/configuration.md names every variable of attache serve --help"
else
  fail "docs/configuration.md does not name: ${missing[*]}"
fi

machine_paths=$(grep -nE '(^|[^A-Za-z0-9_.~])/(work|root|home)/|\.\./shared' "${docs[@]}" || true)
if [ -z "$machine_paths" ]; then
  ok "no path of a build machine in ${#docs[@]} files"
else
  fail "paths outside the repository:"$'\n'"$machine_paths"
fi

# The anchors of a Markdown file's headings, as GitHub makes them.
anchors() {
  awk '/^ *```/ { open = !open; next } !open && /^#+ / { sub(/^#+ +/, ""); print }' "$1" |
    tr '[:upper:]' '[:lower:]' | sed 's/[^a-z0-9 _-]//g; s/ /-/g'
}
broken=()
for doc in "${docs[@]}"; do
  dir=$(dirname "$doc")
  while IFS= read -r target; do
    path=${target%%#*}
    anchor=
    [ "$path" = "$target" ] || anchor=${target#*#}
    if [ -n "$path" ] && [ ! -e "$dir/$path" ]; then
      broken+=("$doc: $target")
    elif [ -n "$anchor" ] && [[ ${path:-$doc} == *.md ]] &&
      ! anchors "$([ -n "$path" ] && echo "$dir/$path" || echo "$doc")" | grep -qxF -- "$anchor"; then
      broken+=("$doc: $target (no such heading)")
    fi
  done < <(awk '/^ *```/ { open = !open; next } !open' "$doc" |
    grep -oE '\]\([^)[:space:]]+\)' | sed 's/^](//; s/)$//' | grep -vE '^(https?:|mailto:)' || true)
done
if [ ${#broken[@]} -eq 0 ]; then
  ok "relative links lead to files of the repository"
else
  fail "links to nothing: ${broken[*]}"
fi

copies=0
while IFS=$'\t' read -r doc line kind file option; do
  case $kind in
    bad) fail "$doc:$line: $option" ;;
    file)
      copies=$((copies + 1))
      if [ ! -f "$option" ]; then
        fail "$doc:$line: file=$option: no such file"
      elif cmp -s "$file" "$option"; then
        ok "$doc:$line is $option, byte for byte"
      else
        fail "$doc:$line differs from $option:"$'\n'"$(diff "$option" "$file" || true)"
      fi
      ;;
  esac
done <"$manifest"

# --- A fresh server. --------------------------------------------------------------

echo "==> attache serve (development mode, SQLite, fs)"
while IFS= read -r variable; do
  unset "$variable"
done < <("$bin" serve --help | grep -o '\[env: [A-Z0-9_]*' | sed 's/\[env: //' | sort -u)
mkdir -p "$tmp/server" "$tmp/bin" "$tmp/state"
export DATABASE_URL="sqlite://$tmp/server/attache.db?mode=rwc" STORAGE_ROOT="$tmp/server/uploads"
LISTEN_ADDR=127.0.0.1:0 "$bin" serve >"$tmp/server.out" 2>"$tmp/server.log" &
server_pid=$!
origin=
for _ in $(seq 1 300); do
  origin=$(sed -n 's|^Playground: \(http://[^ ]*\)/graphql .*|\1|p' "$tmp/server.out")
  [ -n "$origin" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
dev_token=$(awk 'found && NF { print; exit } /^Development token/ { found = 1 }' "$tmp/server.out")
if [ -z "$origin" ] || [ -z "$dev_token" ]; then
  echo "run-examples: the server printed no playground address or development token:" >&2
  cat "$tmp/server.out" "$tmp/server.log" >&2
  exit 1
fi
for _ in $(seq 1 100); do
  command curl -fsS "$origin/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
ok "attache serve at $origin printed a development token"

# --- The blocks, one shell per Markdown file. -------------------------------------

ln -s "$bin" "$tmp/bin/attache"
shells=0 graphqls=0
for i in "${!docs[@]}"; do
  doc=${docs[$i]}
  driver="$tmp/driver-$i.sh"
  work="$tmp/work-$i"
  mkdir -p "$work"
  blocks=0
  {
    echo 'set -euo pipefail'
    while IFS=$'\t' read -r from line kind file option; do
      [ "$from" = "$doc" ] || continue
      case $kind in
        sh)
          printf 'examples_block %q %q\n' "$doc:$line (sh)" "$option"
          printf 'source %q\n' "$file"
          shells=$((shells + 1)) blocks=$((blocks + 1))
          ;;
        graphql)
          printf 'examples_block %q\n' "$doc:$line (graphql${option:+, expect $option})"
          printf 'examples_graphql %q %q\n' "$file" "$option"
          graphqls=$((graphqls + 1)) blocks=$((blocks + 1))
          ;;
        save)
          printf 'cp %q %q\n' "$file" "$option"
          ;;
      esac
    done <"$manifest"
  } >"$driver"
  [ "$blocks" -gt 0 ] || continue
  echo "==> $doc: $blocks blocks"
  status=0
  (cd "$work" && BASE=$origin TOKEN=$dev_token ATTACHE=$bin PATH="$tmp/bin:$PATH" \
    EXAMPLES_STATE="$tmp/state" timeout 300 bash "$driver") 2>&1 | sed 's/^/    /' ||
    status=$?
  if [ "$status" -eq 0 ]; then
    ok "$doc: $blocks blocks ran"
  else
    fail "$doc: the block at $(cat "$tmp/state/current" 2>/dev/null || echo '?') (exit $status)"
  fi
done

if kill -0 "$server_pid" 2>/dev/null; then
  if stop_server; then ok "attache serve stopped on SIGTERM with status 0"; else fail "attache serve did not stop cleanly"; fi
else
  fail "attache serve died during the examples"
fi
if [ "$failures" -gt 0 ]; then
  echo "--- last lines of the server log ---" >&2
  tail -n 20 "$tmp/server.log" >&2
  echo "examples: $failures FAILED" >&2
  exit 1
fi
echo "examples: all passed: $shells shell blocks, $graphqls GraphQL blocks, $copies file copies, in ${#docs[@]} files"
