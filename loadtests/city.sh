#!/usr/bin/env bash
# Issue 4's search benchmark: loads the deterministic city (100,000 patients, 1,000,000
# observations by default) into a release build of `sen` with `sen-citygen` — the ingest
# figure — then runs the query scenarios with goose and prints throughput and percentiles,
# database size per resource and index rows per resource. Copy the figures into
# loadtests/RESULTS.md with the date, the machine and this command.
#
#   loadtests/city.sh                               # both backends, 20 s per query scenario
#   BACKENDS=postgres CITY_PATIENTS=10000 loadtests/city.sh
#   RELOAD=1 loadtests/city.sh                      # load again even if a loaded copy exists
#
# A loaded database is kept (PostgreSQL database sen_city_<patients>, SQLite file under
# ~/.cache/sen-city) so the queries can be run again without the load; the ingest figure is
# printed only by a run that loads. Each query scenario runs once unreported ($WARMUP) first.
# After loading, PostgreSQL gets `VACUUM ANALYZE`, as a bulk load is followed in operation
# (autovacuum would do it within minutes); every run then `ANALYZE`s.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sen-target}"
RUN_TIME="${RUN_TIME:-20s}"
WARMUP="${WARMUP:-10s}"
USERS="${USERS:-32}"
TOTAL_USERS="${TOTAL_USERS:-4}"
BACKENDS="${BACKENDS:-postgres sqlite}"
SCENARIOS="${SCENARIOS:-city-subject-code city-name city-code-date city-include city-total}"
CITY_PATIENTS="${CITY_PATIENTS:-100000}"
PG_ADMIN="${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}"
PORT="${PORT:-18080}"
OUT="loadtests/out/city-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"

cargo build --release --bin sen -p sen-server
cargo build --release -p sen-loadtests
# BENCH_SEN runs another build of `sen` (an A/B comparison in one session on the same data).
SEN="${BENCH_SEN:-$CARGO_TARGET_DIR/release/sen}"
LOAD="$CARGO_TARGET_DIR/release/sen-load"
GEN="$CARGO_TARGET_DIR/release/sen-citygen"

pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null || true' EXIT

peak_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
# query <scenario> <users> <run time> [goose options…]: one goose run of a city query scenario.
query() {
  SEN_LOAD_TOKEN="$token" SEN_LOAD_PATIENTS=0 SEN_CITY_PATIENTS="$CITY_PATIENTS" "$LOAD" --host "http://127.0.0.1:$PORT" \
    --scenarios "${1//-/}" --users "$2" --hatch-rate "$2" --run-time "$3" --quiet "${@:4}"
}

for backend in $BACKENDS; do
  load=""
  case "$backend" in
    sqlite)
      dir="$HOME/.cache/sen-city/sqlite-$CITY_PATIENTS"
      if [ -n "${RELOAD:-}" ] || [ ! -f "$dir/loaded" ]; then rm -rf "$dir"; load=1; fi
      mkdir -p "$dir"
      url="sqlite://$dir/sen.db"
      ;;
    postgres)
      name="sen_city_$CITY_PATIENTS"
      db="${PG_ADMIN%/*}/$name"
      if [ -n "${RELOAD:-}" ] || [ "$(psql "$db" -tAc "SELECT value FROM public.city_loaded" 2>/dev/null)" != "$CITY_PATIENTS" ]; then
        psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $name WITH (FORCE)"
        psql "$PG_ADMIN" -qc "CREATE DATABASE $name"
        load=1
      fi
      url="$db"
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
  for _ in $(seq 1 1200); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.1; done
  if ! kill -0 "$pid" 2>/dev/null; then echo "sen did not start; see $OUT/$backend-server.log" >&2; exit 1; fi

  if [ -n "$load" ]; then
    echo "== $backend: loading $CITY_PATIENTS patients and $((CITY_PATIENTS * 10)) observations"
    SEN_LOAD_TOKEN="$token" "$GEN" --host "http://127.0.0.1:$PORT" --patients "$CITY_PATIENTS" --concurrency "$USERS" \
      2> "$OUT/$backend-ingest.log" | tee "$OUT/$backend-ingest.txt" | sed 's/^/-- ingest: /'
    if [ "$backend" = postgres ]; then
      psql "$db" -qc "VACUUM ANALYZE"
      psql "$db" -qc "CREATE TABLE public.city_loaded (value bigint); INSERT INTO public.city_loaded VALUES ($CITY_PATIENTS)"
    else
      touch "$dir/loaded"
    fi
  fi

  # Statistics current for the schema now served (a migration may have added some).
  [ "$backend" = postgres ] && psql "$db" -qc "ANALYZE"
  echo "== $backend: size"
  if [ "$backend" = postgres ]; then
    psql "$db" -tA -F' ' -c "SELECT (SELECT count(*) FROM ehr.resource) AS resources,
        pg_database_size(current_database()) / 1048576 AS mb,
        pg_database_size(current_database()) / (SELECT count(*) FROM ehr.resource) AS bytes_per_resource,
        ((SELECT count(*) FROM ehr.sp_string) + (SELECT count(*) FROM ehr.sp_token) + (SELECT count(*) FROM ehr.sp_reference)
          + (SELECT count(*) FROM ehr.sp_date) + (SELECT count(*) FROM ehr.sp_number) + (SELECT count(*) FROM ehr.sp_uri))::float
          / (SELECT count(*) FROM ehr.resource) AS index_rows_per_resource" \
      | awk '{printf "-- %s resources, %s MB, %s bytes per resource, %.1f index rows per resource\n", $1, $2, $3, $4}'
  else
    sqlite3 "$dir/sen.db" "SELECT (SELECT count(*) FROM ehr_resource),
        ((SELECT count(*) FROM ehr_sp_string) + (SELECT count(*) FROM ehr_sp_token) + (SELECT count(*) FROM ehr_sp_reference)
          + (SELECT count(*) FROM ehr_sp_date) + (SELECT count(*) FROM ehr_sp_number) + (SELECT count(*) FROM ehr_sp_uri))" \
      | awk -F'|' -v bytes="$(du -cb "$dir"/sen.db* | tail -1 | cut -f1)" \
          '{printf "-- %s resources, %d MB, %d bytes per resource, %.1f index rows per resource\n", $1, bytes / 1048576, bytes / $1, $2 / $1}'
  fi

  for scenario in $SCENARIOS; do
    users="$USERS"
    [ "$scenario" = city-total ] && users="$TOTAL_USERS"
    # A first, unreported run brings the pages this query touches into memory.
    query "$scenario" "$users" "$WARMUP" > /dev/null 2>&1 || true
    query "$scenario" "$users" "$RUN_TIME" --report-file "$OUT/$backend-$scenario.html" \
      > "$OUT/$backend-$scenario.txt" 2>&1 || true
    sed -n '/resetting metrics/,$p' "$OUT/$backend-$scenario.txt" \
      | grep -E "^ GET" | awk -v b="$backend" -v s="$scenario" -v u="$users" \
        'NR==1 {print "-- " b " " s ", " u " users (requests | fails | req/s):" $0} NR==3 {print "   percentiles 50/75/98/99/99.9/99.99 ms:" $0}'
  done
  echo "== $backend: peak RSS $(( $(peak_kb $pid) / 1024 )) MB"
  kill -TERM "$pid"; wait "$pid" || true
done
echo "full reports in $OUT"
