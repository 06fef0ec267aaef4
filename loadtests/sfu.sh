#!/usr/bin/env bash
# Load on the forwarding unit (issue 6): a release build of `sen` on the embedded store, media
# on loopback, and `sen-sfu-load` opening one-to-one consultations of Rust webrtc peers (audio
# and 500 kbit/s video both ways), level by level. Prints one JSON line per level: forwarded
# packets/s and per server core, loss, latency p50/p99, join time, server RSS. Copy the
# figures into loadtests/RESULTS.md with the date, the machine and this command.
#
#   loadtests/sfu.sh                          # levels 10,50,100,150; 15 s each
#   LEVELS=100 SECONDS_PER_LEVEL=30 loadtests/sfu.sh
#
# The load generator (2 peers per consultation, each encrypting and decrypting its own media)
# shares the machine's cores with the server: the per-core figure divides by the server's own
# CPU time only.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sen-target}"
LEVELS="${LEVELS:-10,50,100,150}"
SECONDS_PER_LEVEL="${SECONDS_PER_LEVEL:-15}"
PORT="${PORT:-18090}"
OUT="loadtests/out/sfu-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"

cargo build --release --bin sen -p sen-server
cargo build --release --bin sen-sfu-load -p sen-loadtests
SEN="${BENCH_SEN:-$CARGO_TARGET_DIR/release/sen}"
# The server's own hop is read off a capture of loopback (needs root and tcpdump).
command -v tcpdump >/dev/null || echo "== tcpdump is missing (apt install tcpdump): the server's hop is not measured"
export SFU_CAPTURE_DIR="$OUT"
LOAD="$CARGO_TARGET_DIR/release/sen-sfu-load"

pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null || true' EXIT
dir=$(mktemp -d)
keys="$OUT/keys"
mint() { SEN_DATA_DIR="$keys" "$SEN" token --ttl 1d "$@"; }
SYSTEM_TOKEN=$(mint --role system)
DOCTOR_TOKEN=$(mint --role practitioner --practitioner Practitioner/bench-doctor)
PATIENT_TOKEN=$(mint --role patient --patient Patient/bench-patient)
export SYSTEM_TOKEN DOCTOR_TOKEN PATIENT_TOKEN
# Media on loopback; rate limits far above the load (every consultation is 4 HTTP calls).
SEN_TELEHEALTH_MEDIA_BIND=127.0.0.1 SEN_RATE_LIMIT_PER_IP_PER_MINUTE=1000000000 \
  SEN_RATE_LIMIT_PER_CLIENT_PER_MINUTE=1000000000 SEN_DATA_DIR="$keys" \
  DATABASE_URL="sqlite://$dir/sen.db" SEN_LOG=warn \
  "$SEN" serve --listen "127.0.0.1:$PORT" > "$OUT/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.1; done
echo "== idle RSS $(( $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status") / 1024 )) MB"
"$LOAD" "http://127.0.0.1:$PORT" "$pid" "$LEVELS" "$SECONDS_PER_LEVEL" | tee "$OUT/levels.jsonl"
