#!/usr/bin/env bash
# Produce throughput of two or more `strata` builds (or settings) side by side, as a user
# measures it: each broker started fresh on an empty data directory, `stratactl perf produce`
# against it, rounds interleaved so drift hits every variant alike.
#
#   VARIANTS='base=/tmp/base-target/release/strata new=target/release/strata:http.listen="127.0.0.1:19644"' \
#     tests/scripts/compare-produce.sh
#
# A variant is name=binary, optionally with broker settings after a colon, comma-separated
# (a build without the HTTP listener refuses `http.*` settings):
#   'off=target/release/strata:http.listen=""'
# SCRAPE=1 scrapes http://127.0.0.1:19644/metrics every second while a broker is measured
# (so give the variants that listener). ROUNDS (3),
# RECORDS (1000000), SIZE (1024) and PARTITIONS (4) shape the run; STRATACTL names stratactl
# (target/release/stratactl).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
RECORDS=${RECORDS:-1000000}
SIZE=${SIZE:-1024}
PARTITIONS=${PARTITIONS:-4}
STRATACTL=${STRATACTL:-target/release/stratactl}
: "${VARIANTS:?set VARIANTS to name=binary[:settings] pairs}"
KAFKA=127.0.0.1:19092
HTTP=127.0.0.1:19644

run_one() {
  local name=$1 spec=$2
  local bin=${spec%%:*} extra=""
  [[ $spec == *:* ]] && extra=${spec#*:}
  local dir; dir=$(mktemp -d)
  local args=(--data-dir "$dir" --listen "$KAFKA" --set 'controller.listen="127.0.0.1:0"')
  if [ -n "$extra" ]; then
    IFS=',' read -ra sets <<<"$extra"
    for s in "${sets[@]}"; do args+=(--set "$s"); done
  fi
  RUST_LOG=warn "$bin" "${args[@]}" >"$dir.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    "$STRATACTL" --bootstrap "$KAFKA" --timeout-ms 1000 cluster info >/dev/null 2>&1 && break
    sleep 0.2
  done
  local scraper=""
  if [ "${SCRAPE:-0}" = 1 ]; then
    (while sleep 1; do curl -s "http://$HTTP/metrics" >/dev/null || true; done) &
    scraper=$!
  fi
  local out
  out=$("$STRATACTL" --bootstrap "$KAFKA" --json perf produce -t bench -p "$PARTITIONS" \
    -n "$RECORDS" -s "$SIZE")
  [ -n "$scraper" ] && kill "$scraper" 2>/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir" "$dir.log"
  echo "$name $(echo "$out" | tail -1)"
}

for round in $(seq "$ROUNDS"); do
  for v in $VARIANTS; do
    run_one "${v%%=*}" "${v#*=}"
  done
done | python3 -c '
import json, sys, statistics
runs = {}
for line in sys.stdin:
    name, doc = line.split(" ", 1)
    parsed = json.loads(doc)
    runs.setdefault(name, []).append(parsed[0] if isinstance(parsed, list) else parsed)
    print(name, doc.strip(), flush=True)
for name, docs in runs.items():
    mbs = [d["mb_per_sec"] for d in docs]
    each = ", ".join("%.1f" % m for m in mbs)
    print("%s: MB/s median %.1f (runs %s)" % (name, statistics.median(mbs), each))
'
