#!/usr/bin/env bash
# Issue 5's relay pace: on the city PostgreSQL database `loadtests/city.sh` loaded, runs
# RUN_TIME of code+date searches (each leaves an access record in the outbox; the relay waits
# while the server is busy), then times how long the relay takes to empty the outbox with
# nothing else running, and prints records per second. Compare builds in one sitting:
#
#   BENCH_SEN=/tmp/sen-a loadtests/relay.sh; BENCH_SEN=/tmp/sen-b loadtests/relay.sh; …
#
# The city must be loaded already (`BACKENDS=postgres loadtests/city.sh`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sen-target}"
RUN_TIME="${RUN_TIME:-20s}"
USERS="${USERS:-32}"
CITY_PATIENTS="${CITY_PATIENTS:-100000}"
PG_ADMIN="${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}"
PORT="${PORT:-18080}"
db="${PG_ADMIN%/*}/sen_city_$CITY_PATIENTS"
OUT="loadtests/out/relay-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"

if ! psql "$db" -Atc "SELECT 1 FROM public.city_loaded" >/dev/null 2>&1; then
  echo "no loaded city at $db: run BACKENDS=postgres loadtests/city.sh first" >&2
  exit 1
fi
cargo build --release --bin sen -p sen-server
cargo build --release -p sen-loadtests
SEN="${BENCH_SEN:-$CARGO_TARGET_DIR/release/sen}"
LOAD="$CARGO_TARGET_DIR/release/sen-load"

q() { psql "$db" -Atc "$1"; }
waiting() { q "SELECT COALESCE(SUM(jsonb_array_length(records::jsonb)), 0) FROM ehr.audit_outbox"; }

pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null || true' EXIT
keys="$OUT/keys"
token=$(SEN_DATA_DIR="$keys" "$SEN" token --role system --ttl 1d 2>/dev/null)
SEN_RATE_LIMIT_PER_IP_PER_MINUTE=1000000000 SEN_RATE_LIMIT_PER_CLIENT_PER_MINUTE=1000000000 \
  SEN_DATA_DIR="$keys" DATABASE_URL="$db" SEN_LOG=warn "$SEN" serve --listen "127.0.0.1:$PORT" \
  > "$OUT/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 1200); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.1; done
if ! kill -0 "$pid" 2>/dev/null; then echo "sen did not start; see $OUT/server.log" >&2; exit 1; fi

# What an earlier run left is relayed before this one counts.
while [ "$(q 'SELECT COUNT(*) FROM ehr.audit_outbox')" != 0 ]; do sleep 1; done
SEN_LOAD_TOKEN="$token" SEN_LOAD_PATIENTS=0 SEN_CITY_PATIENTS="$CITY_PATIENTS" "$LOAD" \
  --host "http://127.0.0.1:$PORT" --scenarios citycodedate --users "$USERS" --hatch-rate "$USERS" \
  --run-time "$RUN_TIME" --quiet > "$OUT/load.txt" 2>&1
start=$(date +%s.%N)
records=$(waiting)
while [ "$(q 'SELECT COUNT(*) FROM ehr.audit_outbox')" != 0 ]; do sleep 0.5; done
end=$(date +%s.%N)
awk -v n="$records" -v s="$start" -v e="$end" \
  'BEGIN { printf "-- relay: %d records in %.1f s: %.0f records/s\n", n, e - s, n / (e - s) }'
