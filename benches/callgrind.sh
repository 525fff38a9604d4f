#!/usr/bin/env bash
# Instructions per Check for each `benches/decide.rs` callgrind case: the
# whole process is counted at two iteration counts and the difference divided,
# so setup (key generation, registry load) cancels out.
# Usage: benches/callgrind.sh [CASE...]   (default: uncached cached; also
#   uncached-domain cached-domain). DECIDE_BIN=path measures another build of
#   the benchmark (a before/after comparison); SCALE=k multiplies the counts.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${DECIDE_BIN:-}
[ -n "$bin" ] || bin=$(cargo bench --bench decide --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "decide" and m.get("executable"):
        print(m["executable"])')
ir() { # case n
  local out
  out=$(mktemp)
  DECIDE_CALLGRIND="$1:$2" valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" >/dev/null 2>&1
  awk '/^summary:/ { print $2 }' "$out"
  rm -f "$out"
}
for case in "${@:-uncached cached}"; do
  for c in $case; do
    k=${SCALE:-1}
    case $c in uncached*) n1=20 n2=$((20 + 200 * k)) ;; *) n1=200 n2=$((200 + 2000 * k)) ;; esac
    a=$(ir "$c" "$n1")
    b=$(ir "$c" "$n2")
    echo "$c: $(( (b - a) / (n2 - n1) )) instructions per Check (Ir $a at $n1, $b at $n2)"
  done
done
