#!/usr/bin/env bash
# The console's page times on a full store (issue 16), run by hand on a release build:
#
#   cargo build --release -p usm && tests/benches/console.sh target/release/usm [RECORDS]
#
# One `usm serve` with its bundled modules on a fresh data directory takes RECORDS creates
# (default 100,000) through the `it` pipeline over HTTP; then the script signs in to the console
# as a browser does (the sign-in form's CSRF cookie, the token posted in the form body) and wrk
# (Debian's package) times each page with one connection for 10 s, so a request never waits
# behind another: the latency is the server's time to answer plus a loopback round trip.
# Prints wrk's rate and percentiles per page; BENCHMARKS.md quotes them.
set -euo pipefail
usm=$(realpath "$1")
records=${2:-100000}
port=${USM_BENCH_PORT:-18091}
base="http://127.0.0.1:$port"
token=bench-admin-token-0123456789abcdef
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

USM_DATA_DIR="$dir/data" USM_ADDR="127.0.0.1:$port" USM_ADMIN_TOKEN=$token \
    USM_RATE_LIMIT_PER_SECOND=0 USM_LOG_LEVEL=warn "$usm" serve >>"$dir/server.log" 2>&1 &
pid=$!
until curl -fs "$base/healthz" >/dev/null; do sleep 0.05; done

"$usm" bench --url "$base" --token "$token" --mode http --records "$records" \
    --concurrency 32 --json >"$dir/bench.json"
echo "loaded $records records"
# Let the search index and the other outbox consumers catch up before timing reads.
until curl -fs -H "Authorization: Bearer $token" "$base/api/v1/records?count=true&limit=1" |
    python3 -c "import json,sys; sys.exit(0 if json.load(sys.stdin).get('total', 0) >= $records else 1)"; do
    sleep 1
done

jar="$dir/cookies"
csrf=$(curl -fs -c "$jar" "$base/ui/login" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p' | head -1)
curl -fs -b "$jar" -c "$jar" -o /dev/null "$base/ui/login" \
    --data-urlencode "csrf=$csrf" --data-urlencode "token=$token"
session=$(awk '$6 == "usm_session" {print $7}' "$jar")
[ -n "$session" ] || { echo "no console session" >&2; exit 1; }

middle=$((records / 2))
for path in "/ui/records" "/ui/records?domain=it&kind=incident&state=new" \
    "/ui/records?kind=incident&sort=-updated_at" "/ui/records/INC-$middle" "/ui/portal" \
    "/ui/new?kind=incident&domain=it" "/ui/admin/modules"; do
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: usm_session=$session" "$base$path")
    [ "$status" = 200 ] || { echo "GET $path answered $status" >&2; exit 1; }
    echo "GET $path"
    wrk -t1 -c1 -d10s --latency -H "Cookie: usm_session=$session" "$base$path" |
        grep -E 'Requests/sec|^ +(50|90|99)%|Non-2xx'
done
