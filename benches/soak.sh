#!/usr/bin/env bash
# Soak test: mixed allowed/denied load through a real Envoy while the
# registry is rewritten every 100 ms and the OTLP collector is killed and
# restarted (see benches/soak.rs for every knob).
#
#   benches/soak.sh [MINUTES]        default 10; SOAK_SECONDS overrides
#   SOAK_COLLECTOR='otelcol --config ... {port}' benches/soak.sh   # a real collector
#
# Needs `envoy` on PATH (or ENVOY_BIN). Traffic stays on 127.0.0.1, is paced
# (SOAK_RPS, default 200/s) and stops by itself. The report is also written
# to target/soak/last.txt; the exit status is non-zero on any unexpected
# outcome or RSS growth.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
export SOAK_SECONDS=${SOAK_SECONDS:-$((minutes * 60))}
mkdir -p target/soak
cargo bench --bench soak 2>&1 | tee target/soak/last.txt
