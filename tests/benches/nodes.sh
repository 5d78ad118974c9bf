#!/usr/bin/env bash
# Creates per second and their p99 with 1, 2 and 3 usm nodes on one PostgreSQL database, beside
# one node on the embedded store, same machine, same run (issue 15). Run by hand on a release
# build:
#
#   cargo build --release -p usm && tests/benches/nodes.sh target/release/usm [RECORDS]
#
# Each setup: fresh store, `usm serve` nodes with their bundled modules (the `it` pipeline),
# durable acks, no rate limit; RECORDS creates (default 20,000) over HTTP from 32 clients in
# all, split evenly over the nodes (one `usm bench --url` per node, run at once). The figure is
# all creates over the slowest client's time; p99 is the highest of the clients' p99s.
# PostgreSQL: Debian's, a private cluster from `.ci/postgres`, fsync and synchronous_commit on.
set -euo pipefail
usm=$(realpath "$1")
records=${2:-20000}
token=bench-admin-token-0123456789abcdef
here=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${TEST_POSTGRES_DIR:-}" ] && "$here/.ci/postgres" stop "$TEST_POSTGRES_DIR"
    rm -rf "$work"
}
trap cleanup EXIT
eval "$("$here/.ci/postgres" start)"
server_url=${TEST_POSTGRES_URL%/*}

# Starts a node on port $1 with data directory $2 and store URL $3 (empty: the embedded store).
serve() {
    local port=$1 dir=$2 url=$3
    mkdir -p "$dir"
    env USM_DATA_DIR="$dir" USM_ADDR="127.0.0.1:$port" USM_ADMIN_TOKEN=$token \
        USM_RATE_LIMIT_PER_SECOND=0 USM_LOG_LEVEL=warn ${url:+USM_STORE_URL=$url} \
        "$usm" serve >>"$dir.log" 2>&1 &
    pids+=($!)
    until curl -fs "http://127.0.0.1:$port/healthz" >/dev/null; do sleep 0.05; done
}

# Runs RECORDS creates split over the nodes on ports "$@" at once; prints the figures.
measure() {
    local label=$1; shift
    local nodes=$# per=$((records / $#)) clients=$((32 / $#)) port n=0 benches=()
    for port in "$@"; do
        "$usm" bench --url "http://127.0.0.1:$port" --token "$token" --mode http \
            --records "$per" --concurrency "$clients" --json >"$work/bench-$n.json" &
        benches+=($!)
        n=$((n + 1))
    done
    wait "${benches[@]}"
    python3 - "$label" "$nodes" "$work"/bench-*.json <<'EOF'
import json, sys
label, nodes, files = sys.argv[1], sys.argv[2], sys.argv[3:]
reports = [json.load(open(f))[0] for f in files]
total = sum(r["records"] for r in reports)
seconds = max(r["seconds"] for r in reports)
p99 = max(r["p99_micros"] for r in reports) / 1000
print(f"{label}: {nodes} node(s), {total} creates, {total / seconds:.0f} creates/s, p99 {p99:.1f} ms")
EOF
    rm -f "$work"/bench-*.json
}

serve 18100 "$work/sled" ""
measure "sled" 18100
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

for nodes in 1 2 3; do
    db="usm_bench_$nodes"
    psql "$TEST_POSTGRES_URL" -qc "CREATE DATABASE $db"
    ports=()
    for n in $(seq 1 "$nodes"); do
        port=$((18100 + nodes * 10 + n))
        serve "$port" "$work/pg-$nodes-$n" "$server_url/$db"
        ports+=("$port")
    done
    measure "postgres" "${ports[@]}"
    for n in $(seq 1 "$nodes"); do kill "${pids[-$n]}" 2>/dev/null || true; done
    wait "${pids[@]}" 2>/dev/null || true
done
