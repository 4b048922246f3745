#!/usr/bin/env bash
# Instructions a request of bench_service_app builds, counted by callgrind
# (BENCHMARKS.md (j), "instructions a request"): for each BINARY, the
# service runs under `valgrind --tool=callgrind` against one PostgreSQL
# node (as the primary, so reads go there too), takes 20 GETs and 20 POSTs
# to warm up, then SMALL and, in a second run, LARGE sequential requests of
# one kind from curl on one keep-alive connection; the difference of the
# two runs' totals over LARGE - SMALL is one request's cost, start-up and
# exit cancelling out. Instruction counts do not depend on the machine's
# load (the health monitor's probes, one a second, add a few per request).
#
#   tools/bench_service_app/instructions.sh BINARY...
#
# DATABASE_URL: a server where the table `items` may be created and
# filled (default postgres://postgres@127.0.0.1:5432/postgres); SMALL
# (1000), LARGE (5000), PORT (3100). Needs valgrind, curl and psql.
set -euo pipefail

url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
small=${SMALL:-1000}
large=${LARGE:-5000}
port=${PORT:-3100}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

psql "$url" -qc "CREATE TABLE IF NOT EXISTS items (id bigserial PRIMARY KEY, name text NOT NULL)"
psql "$url" -qc "INSERT INTO items (name) SELECT 'item ' || g FROM generate_series(1, $large) g"

# Total instructions of one run: BINARY, get|post, request count.
total() {
    local binary=$1 kind=$2 count=$3 base="http://127.0.0.1:$port"
    SERVICE_NODES="n0|local|primary|$url" SERVICE_LOCAL_REGION=local LISTEN_ADDR="127.0.0.1:$port" \
        valgrind --tool=callgrind --callgrind-out-file="$out/run" "$binary" 2>"$out/log" &
    local pid=$!
    for _ in $(seq 600); do
        curl -sf -o /dev/null "$base/health" && break
        sleep 0.1
    done
    curl -sf -o /dev/null "$base/items/[1-20]"
    curl -sf -o /dev/null -XPOST -H 'content-type: application/json' -d '{"name":"w"}' "$base/items?warm=[1-20]"
    case $kind in
        get) curl -sf -o /dev/null "$base/items/[1-$count]" ;;
        post) curl -sf -o /dev/null -XPOST -H 'content-type: application/json' -d '{"name":"x"}' \
            "$base/items?n=[1-$count]" ;;
    esac
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    awk '/^summary:/ {print $2}' "$out/run"
}

printf '%-40s %14s %14s\n' "service" "GET" "POST"
for binary in "$@"; do
    row=()
    for kind in get post; do
        a=$(total "$binary" "$kind" "$small")
        b=$(total "$binary" "$kind" "$large")
        row+=("$(( (b - a) / (large - small) ))")
    done
    printf '%-40s %14s %14s\n' "$binary" "${row[0]}" "${row[1]}"
done
