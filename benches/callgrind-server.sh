#!/usr/bin/env bash
# Instructions per allowed Check for the whole server process, counted by
# callgrind: service-auth against the no-op ext_authz server
# (examples/noop_authz.rs: tonic + envoy-types, full prost decode) answering
# a header of the token's size. Each server runs under
# `valgrind --tool=callgrind`; once it answers, its counters are zeroed
# (startup and readiness polls drop out), h2load sends N identical allowed
# Checks on one connection, one at a time, and the server is stopped with
# SIGTERM. Two runs, N1 and N2 Checks:
#     (Ir at N2 - Ir at N1) / (N2 - N1)
# so connection setup and shutdown cancel out, leaving the cost of one Check.
# Instruction counts repeat to within a few per cent on a busy machine,
# unlike wall-clock figures.
#
#   benches/callgrind-server.sh              # both servers, defaults below
#   N1=200 N2=1200 benches/callgrind-server.sh sidecar   # one server
#   PROFILE=1 benches/callgrind-server.sh    # also print callgrind_annotate
#                                            # (inclusive, top functions) of each N2 run
#   METRICS=1 benches/callgrind-server.sh    # the sidecar with its OTLP metrics on
#                                            # (export interval 1 h: records, never sends)
#   SIDECAR_BIN=/tmp/old/service-auth benches/callgrind-server.sh sidecar   # another build
#   ALG=EdDSA benches/callgrind-server.sh sidecar   # tokens signed with dev-pki's Ed25519 key
#
# Servers: `sidecar` (service-auth, dev-pki registry, the request of
# benches/run.sh), `noop` (answers 4 bytes), `noop-token` (answers
# TOKEN_BYTES, default 600). Time-driven work is kept out of the count: the
# registry's file poll runs every hour here instead of every 2 s (under
# valgrind one Check takes ~50x as long, so a per-second cost would be
# charged to Checks 50x over).
# Needs valgrind and h2load (Debian nghttp2-client). Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

N1=${N1:-500}
N2=${N2:-2500}
TOKEN_BYTES=${TOKEN_BYTES:-600}
PORT=${PORT:-19391}
SERVERS=("${@:-sidecar noop noop-token}")

for tool in valgrind h2load curl; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed (valgrind, nghttp2-client, curl)" >&2; exit 1; }
done

echo "==> building (release, line tables for callgrind_annotate)"
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  cargo build --release --quiet --bin service-auth --example noop_authz --example encode_check
BIN=$PWD/target/release/service-auth
SIDECAR_BIN=${SIDECAR_BIN:-$BIN}
NOOP=$PWD/target/release/examples/noop_authz

work=$(mktemp -d)
server_pid=
cleanup() { [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

eval "$($BIN dev-pki "$work/pki" | grep '^export ')"
python3 - "$work/pki/service-auth.yaml" "$PORT" "${METRICS:-}" <<'PY'
import sys, re
path, port, metrics = sys.argv[1], sys.argv[2], sys.argv[3]
s = open(path).read()
s = re.sub(r"^  grpc: .*$", f"  grpc: 127.0.0.1:{port}", s, flags=re.M)
s = re.sub(r"^  poll_interval: .*$", "  poll_interval: 1h", s, flags=re.M)
if metrics:
    # A collector nobody listens on, exported once an hour: the run records
    # every Check's metrics and never sends them.
    s = re.sub(r"^    endpoint: .*$", "    endpoint: http://127.0.0.1:9", s, flags=re.M)
    s = re.sub(r"^    interval: .*$", "    interval: 1h", s, flags=re.M)
else:
    s = re.sub(r"telemetry:\n(  .*\n)+", "", s)
open(path, "w").write(s)
PY
if [ "${ALG:-HS256}" = EdDSA ]; then
  # Sign with dev-pki's Ed25519 key instead (the registry comment's recipe):
  # the HS256 key becomes verify-only, the Ed25519 entry gets its private key.
  python3 - "$work/pki/registry.yaml" <<'PY'
import sys, re
path = sys.argv[1]; s = open(path).read()
s = re.sub(r"^(      secret_file: .*)$", r"\1\n      verify_only: true", s, count=1, flags=re.M)
s = s.replace("      public_key_file: keys/ed25519.pub\n      verify_only: true",
              "      private_key_file: keys/ed25519.pem")
open(path, "w").write(s)
PY
fi
target/release/examples/encode_check "$work/pki/clients/api_service.crt" "$API_SERVICE_API_KEY" "$work/allow.bin"

URL="http://127.0.0.1:$PORT/envoy.service.auth.v3.Authorization/Check"
H=(-H 'content-type: application/grpc' -H 'te: trailers')

answer() { # -> the response's printable strings
  curl -s --max-time 30 --http2-prior-knowledge "${H[@]}" --data-binary @"$work/allow.bin" "$URL" |
    tr -d '\0' | strings
}

ir() { # server n -> $IR: Ir of n Checks (plus one connection's setup and the shutdown)
  local server=$1 n=$2 out="$work/callgrind.$1.$2"
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "error: something already listens on 127.0.0.1:$PORT (PORT=... picks another)" >&2; exit 1
  fi
  local cmd
  case $server in
    sidecar) cmd=("$SIDECAR_BIN" serve --config "$work/pki/service-auth.yaml") ;;
    noop) cmd=("$NOOP" "127.0.0.1:$PORT") ;;
    noop-token) cmd=("$NOOP" "127.0.0.1:$PORT" "$TOKEN_BYTES") ;;
    *) echo "unknown server $server" >&2; exit 2 ;;
  esac
  valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" >"$work/$server.log" 2>&1 &
  server_pid=$!
  # Ready means: an allowed answer (the sidecar's registry is loaded).
  local body=
  for _ in $(seq 300); do
    body=$(answer 2>/dev/null || true)
    grep -q x-service-jwt <<<"$body" && break
    sleep 0.2
  done
  if ! grep -q x-service-jwt <<<"$body" || grep -q unauthenticated <<<"$body"; then
    echo "error: $server does not allow the benchmark request:" >&2; tail -5 "$work/$server.log" >&2; exit 1
  fi
  callgrind_control -z "$server_pid" >/dev/null 2>&1
  h2load -n "$n" -c 1 -m 1 -t 1 "${H[@]}" -d "$work/allow.bin" "$URL" >"$work/h2load.log" 2>&1
  if ! grep -q " $n succeeded" <(sed "s/,//g" "$work/h2load.log"); then
    echo "error: not every Check succeeded:" >&2; grep requests: "$work/h2load.log" >&2; exit 1
  fi
  kill -TERM "$server_pid"
  wait "$server_pid" || true
  server_pid=
  IR=$(awk '/^summary:/ { print $2 }' "$out")
}

declare -A per_check
for server in ${SERVERS[*]}; do
  # Not in a subshell: the EXIT trap must see the server's pid.
  ir "$server" "$N1"; a=$IR
  ir "$server" "$N2"; b=$IR
  per_check[$server]=$(( (b - a) / (N2 - N1) ))
  printf '%-11s %8d instructions per Check (Ir %d at %d Checks, %d at %d)\n' \
    "$server" "${per_check[$server]}" "$a" "$N1" "$b" "$N2"
  if [ -n "${PROFILE:-}" ]; then
    callgrind_annotate --inclusive=yes "$work/callgrind.$server.$N2" 2>/dev/null | sed -n '1,60p'
  fi
done
if [ -n "${per_check[sidecar]:-}" ] && [ -n "${per_check[noop-token]:-}" ]; then
  python3 -c "print(f'service-auth / token-sized no-op: {${per_check[sidecar]} / ${per_check[noop-token]}:.3f}')"
fi
