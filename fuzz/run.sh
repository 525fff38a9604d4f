#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) and prints
# one summary line per target (executions, crashes) for fuzz/RESULTS.md.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs `cargo install cargo-fuzz`. Only stable Rust is installed here, so
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags. Built without a
# sanitizer by default (SANITIZER=address to change): the code under test is
# safe Rust, and the build is much faster on a shared 2-core machine.
# Seed corpora are generated here (fuzz/corpus is git-ignored); crashes land
# in fuzz/artifacts/<target>/ and make the script exit non-zero.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(forwarded_cert api_key_headers token_verify check_request registry_yaml wire_decode)
fi
sanitizer=${SANITIZER:-none}

cargo fuzz build -s "$sanitizer" >/dev/null

seed() {
  local dir=corpus/$1
  mkdir -p "$dir"
  shift
  local i=0
  for s in "$@"; do
    printf '%s' "$s" >"$dir/seed-$i"
    i=$((i + 1))
  done
}

# forwarded_cert: real certificates, percent-encoded as Envoy sends them.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -subj "/CN=fuzz seed" -addext "subjectAltName=URI:spiffe://fuzz.test/sa/a,DNS:a.fuzz.test" \
  -addext "extendedKeyUsage=clientAuth" -keyout "$tmp/k.pem" -out "$tmp/c.pem" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -subj "/CN=spiffe:\/\/fuzz.test\/sa\/a" -keyout "$tmp/k2.pem" -out "$tmp/c2.pem" 2>/dev/null
urlencode() { python3 -c 'import sys,urllib.parse; print(urllib.parse.quote(open(sys.argv[1]).read(), safe=""), end="")' "$1"; }
seed forwarded_cert "$(urlencode "$tmp/c.pem")" "$(urlencode "$tmp/c2.pem")" "$(cat "$tmp/c.pem")"

# registry_yaml: the shipped files and a service with every field.
seed registry_yaml "$(cat ../config/registry.yaml)" "$(cat ../config/service-auth.yaml)" \
  "$(printf 'token:\n  issuer: i\n  audience: a\n  keys:\n    - kid: k1\n      secret_file: secrets/k1.key\nrevocation:\n  serials: ["0bad", "4F:1A"]\n  crl_files: []\nservices:\n  - id: s\n    principals: [spiffe://x/y, a.b]\n    ca_file: ca.crt\n    certificate_sha256: ["%064d"]\n    scopes: [read]\n    api_keys:\n      - id: p\n        sha256: "%064d"\n        not_after: 2027-01-01T00:00:00Z\n' 0 1)"

# wire_decode: hand-encoded CheckRequests touching every field the view reads
# (socket address, certificate, headers, header_map, context_extensions),
# one with a repeated source and a pipe address, one with a nested Struct.
mkdir -p corpus/wire_decode
python3 - corpus/wire_decode <<'PY'
import sys
def varint(n):
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80]); n >>= 7
    return out + bytes([n])
def ld(tag, b): return varint(tag << 3 | 2) + varint(len(b)) + b
def num(tag, n): return varint(tag << 3) + varint(n)
socket = ld(1, ld(1, ld(2, b"10.0.0.1") + num(3, 8443)))
peer = socket + ld(4, b"spiffe://fuzz.test/sa/a") + ld(5, b"-----BEGIN%20CERTIFICATE-----%0AMIIB%0A")
http = (ld(1, b"req-1") + ld(2, b"POST") + ld(3, ld(1, b"x-api-key") + ld(2, b"key"))
        + ld(13, ld(1, ld(1, b"x-api-key") + ld(3, b"raw"))) + ld(4, b"/p") + num(9, 12))
attrs = (ld(1, peer) + ld(2, ld(4, b"dest")) + ld(4, ld(1, num(1, 5)) + ld(2, http))
         + ld(10, ld(1, b"scope") + ld(2, b"read")))
value = ld(5, ld(1, ld(1, b"k") + ld(2, ld(6, ld(1, ld(3, b"s"))))))
seeds = [ld(1, attrs),
         ld(1, attrs) + ld(1, ld(1, ld(1, ld(2, ld(1, b"/run/sock"))) + ld(5, b"second"))),
         ld(1, ld(11, ld(1, ld(1, b"f") + ld(2, ld(1, ld(1, b"k") + ld(2, value))))))]
for i, seed in enumerate(seeds):
    open(f"{sys.argv[1]}/seed-{i}", "wb").write(seed)
PY

# The structured targets (api_key_headers, token_verify, check_request) build
# their inputs from the certificate pool and a valid token themselves; an
# empty corpus is enough for them.
for t in "${targets[@]}"; do mkdir -p "corpus/$t"; done

status=0
printf '%-16s %8s %12s %8s\n' target seconds execs crashes
for t in "${targets[@]}"; do
  log=$(mktemp)
  set +e
  cargo fuzz run -s "$sanitizer" "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len=16384 -print_final_stats=1 </dev/null >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  crashes=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
  printf '%-16s %8s %12s %8s\n' "$t" "$seconds" "$execs" "$crashes"
  if [ $rc -ne 0 ]; then
    status=1
    echo "--- $t failed (exit $rc); last lines of its log:" >&2
    tail -40 "$log" >&2
  fi
  rm -f "$log"
done
exit $status
