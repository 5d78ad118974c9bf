#!/usr/bin/env bash
# The million-record benchmark (issue 14), run by hand on a release build:
#
#   cargo build --release -p usm && tests/benches/million.sh target/release/usm [RECORDS]
#
# One `usm serve` with its bundled modules on a fresh data directory (durable acks, no rate
# limit) takes RECORDS creates (default 1,000,000) through the `it` pipeline over HTTP in tenths,
# the server's resident memory read after each; then wrk (Debian's package) times a filtered
# list page and the KPIs with four connections for 20 s each, the server is stopped and
# restarted, and the time from start to the first answered /healthz is taken. Prints one line
# per figure; BENCHMARKS.md quotes them.
set -euo pipefail
usm=$(realpath "$1")
records=${2:-1000000}
port=${USM_BENCH_PORT:-18090}
base="http://127.0.0.1:$port"
token=bench-admin-token-0123456789abcdef
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

serve() {
    USM_DATA_DIR="$dir/data" USM_ADDR="127.0.0.1:$port" USM_ADMIN_TOKEN=$token \
        USM_RATE_LIMIT_PER_SECOND=0 USM_LOG_LEVEL=warn "$usm" serve >>"$dir/server.log" 2>&1 &
    pid=$!
    local started
    started=$(date +%s.%N)
    until curl -fs "$base/healthz" >/dev/null; do sleep 0.02; done
    echo "start to first answer: $(echo "$(date +%s.%N) - $started" | bc) s"
}

rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }

serve
step=$((records / 10))
for tenth in $(seq 1 10); do
    "$usm" bench --url "$base" --token "$token" --mode http --records "$step" \
        --concurrency 32 --json >"$dir/bench.json"
    rate=$(python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(r[0]["records_per_second"]))' <"$dir/bench.json")
    echo "after $((tenth * step)) creates: ${rate} creates/s, rss $(rss_mb) MB, data $(du -sm "$dir/data" | cut -f1) MB"
done
curl -fs -H "Authorization: Bearer $token" "$base/metrics" >/dev/null
for path in "/api/v1/records?kind=incident&state=new&limit=50" "/api/v1/kpis" "/api/v1/kpis?domain=it&process=recover"; do
    echo "GET $path"
    wrk -t1 -c4 -d20s --latency -H "Authorization: Bearer $token" "$base$path" |
        grep -E 'Requests/sec|^ +(50|99)%|Non-2xx'
done
kill -TERM "$pid"
wait "$pid" || true
serve
echo "rss after restart: $(rss_mb) MB"
