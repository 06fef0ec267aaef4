#!/usr/bin/env bash
# Runs the goose scenarios (read, create, update) against a release build of `sen` on SQLite and
# on PostgreSQL, 32 users each, and prints throughput, latency percentiles and server memory.
# Copy the figures into loadtests/RESULTS.md with the date, the machine and this command.
#
#   loadtests/run.sh                 # both backends, 30 s per scenario
#   RUN_TIME=10s BACKENDS=sqlite loadtests/run.sh
#   SCENARIOS=transaction loadtests/run.sh   # 100-entry transaction Bundles (x100 = resources/s)
#
# Everything runs on loopback; the load generator shares the machine's cores with the server
# and PostgreSQL, so compare figures within one run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sen-target}"
RUN_TIME="${RUN_TIME:-30s}"
USERS="${USERS:-32}"
BACKENDS="${BACKENDS:-sqlite postgres}"
SCENARIOS="${SCENARIOS:-read create update}"
PG_ADMIN="${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}"
PORT="${PORT:-18080}"
OUT="loadtests/out/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"

cargo build --release --bin sen -p sen-server
cargo build --release -p sen-loadtests
# BENCH_SEN runs another build of `sen` (an A/B comparison in one session on the same machine).
SEN="${BENCH_SEN:-$CARGO_TARGET_DIR/release/sen}"
LOAD="$CARGO_TARGET_DIR/release/sen-load"

# Whatever happens, no server outlives the run (a leftover would answer the next backend's load).
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null || true' EXIT

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
peak_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

for backend in $BACKENDS; do
  case "$backend" in
    sqlite)
      dir=$(mktemp -d)
      url="sqlite://$dir/sen.db"
      ;;
    postgres)
      name="sen_load_$(date +%s)"
      psql "$PG_ADMIN" -qc "CREATE DATABASE $name"
      url="${PG_ADMIN%/*}/$name"
      ;;
  esac
  # The embedded signing key lives in the data directory; the load tools send a system token.
  keys="$OUT/$backend-keys"
  # (Given to the load tools only: sen refuses SEN_* variables it does not know.)
  token=$(SEN_DATA_DIR="$keys" "$SEN" token --role system --ttl 1d 2>/dev/null || true)
  # Rate limits counted (their cost is part of every request) but far above the load; a build
  # from before rate limits (BENCH_SEN) would refuse the variables.
  limits=()
  if "$SEN" config 2>/dev/null | grep -q '^\[rate_limit\]'; then
    limits=(SEN_RATE_LIMIT_PER_IP_PER_MINUTE=1000000000 SEN_RATE_LIMIT_PER_CLIENT_PER_MINUTE=1000000000)
  fi
  env "${limits[@]}" SEN_DATA_DIR="$keys" DATABASE_URL="$url" SEN_LOG=warn "$SEN" serve --listen "127.0.0.1:$PORT" --migrate \
    > "$OUT/$backend-server.log" 2>&1 &
  pid=$!
  if ! kill -0 "$pid" 2>/dev/null; then echo "sen did not start; see $OUT/$backend-server.log" >&2; exit 1; fi
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.1; done
  echo "== $backend: idle RSS $(( $(rss_kb $pid) / 1024 )) MB"
  for scenario in $SCENARIOS; do
    SEN_LOAD_TOKEN="$token" "$LOAD" --host "http://127.0.0.1:$PORT" --scenarios "$scenario" --users "$USERS" --hatch-rate "$USERS" \
      --run-time "$RUN_TIME" --report-file "$OUT/$backend-$scenario.md" --quiet > "$OUT/$backend-$scenario.txt" 2>&1 || true
    # The final report follows goose's "resetting metrics" line (the first is the ramp-up).
    sed -n '/resetting metrics/,$p' "$OUT/$backend-$scenario.txt" \
      | grep -E "Patient|transaction of" | grep -E "\|" | awk -v b="$backend" -v s="$scenario" 'NR==1 {print "-- " b " " s " (requests | fails | req/s):" $0} /\|.*\|.*\|.*\|.*\|.*\|/ && NR>2 {print "   percentiles 50/75/98/99/99.9/99.99 ms:" $0}' | head -3
  done
  if command -v wrk >/dev/null && [[ " $SCENARIOS " == *" read "* ]]; then
    echo "-- $backend read, wrk cross-check (1 thread, $USERS connections, one resource):"
    wrk -t1 -c"$USERS" -d10s --latency -H "Authorization: Bearer $token" "http://127.0.0.1:$PORT/fhir/Patient/load-1" | grep -E "Requests/sec| 50%| 99%"
  fi
  echo "== $backend: RSS after load $(( $(rss_kb $pid) / 1024 )) MB, peak $(( $(peak_kb $pid) / 1024 )) MB"
  kill -TERM "$pid"; wait "$pid" || true
  if [ "$backend" = postgres ]; then
    psql "$PG_ADMIN" -qc "DROP DATABASE $name WITH (FORCE)"
  else
    rm -rf "$dir"
  fi
done
echo "full goose reports in $OUT"
