#!/usr/bin/env bash
# The empty-disk recovery a user meets, through the strata and stratactl binaries: produce,
# restart (the leader epoch rises), produce, lose the data directory, start again, produce
# again. Uploads must resume within a few upload intervals and the local log must stay within
# local.retention.bytes plus two segments.
#
#   cargo build --release --bin strata --bin stratactl
#   tests/scripts/empty-disk-recovery.sh            # BIN_DIR=target/debug for debug
#
# Needs python3 (JSON from `stratactl --json`). Prints what it measured; exits non-zero on
# a failed check.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN_DIR:-target/release}
STRATA=$BIN/strata
CTL=$BIN/stratactl
for b in "$STRATA" "$CTL"; do
  [ -x "$b" ] || { echo "missing $b (cargo build --release --bin strata --bin stratactl)" >&2; exit 2; }
done
WORK=$(mktemp -d)
PORT=${PORT:-19092}
SEGMENT=65536
LOCAL_RETENTION=131072
UPLOAD_MS=500
PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

start() {
  "$STRATA" --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
    --set "controller.listen=\"127.0.0.1:0\"" \
    --set "object_store.url=\"file://$WORK/objects\"" \
    --set "object_store.upload_interval_ms=$UPLOAD_MS" \
    >>"$WORK/strata.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do
    grep -q "serving Kafka clients" "$WORK/strata.log" 2>/dev/null && return
    sleep 0.1
  done
  echo "strata did not start" >&2; cat "$WORK/strata.log" >&2; exit 1
}
stop() {
  kill "$PID"; wait "$PID" || true; PID=
  : >"$WORK/strata.log"
}
ctl() { "$CTL" --bootstrap "127.0.0.1:$PORT" "$@"; }
produce() { # $1 = how many records of 1 KiB
  python3 -c "import sys; [print('r%d:' % i + 'v' * 1000) for i in range($1)]" |
    ctl produce events -p 0 --key-separator : --batch-size 16384 >/dev/null
}
status() { ctl --json tiering status events | python3 -c "
import json, sys
p = json.load(sys.stdin)['partitions'][0]
print(p['remote_end'] if p['remote_end'] is not None else -1, p['log_end'], p['local_start'])"; }
local_bytes() { du -cb "$WORK"/data/logs/events-0/*.log | tail -1 | cut -f1; }
wait_uploaded() { # until the remote end reaches $1, within $2 seconds; prints how long it took
  local t0=$SECONDS
  while :; do
    read -r remote _ _ < <(status)
    [ "$remote" -ge "$1" ] && { echo $((SECONDS - t0)); return; }
    [ $((SECONDS - t0)) -lt "$2" ] || { echo "uploads stopped at $remote (wanted $1)" >&2; tail -20 "$WORK/strata.log" >&2; exit 1; }
    sleep 0.2
  done
}

start
ctl topic create events --partitions 1 -c segment.bytes=$SEGMENT -c local.retention.bytes=$LOCAL_RETENTION >/dev/null
produce 1000
read -r _ end _ < <(status)
wait_uploaded $((end - 100)) 30 >/dev/null
stop; start                                   # the leader epoch rises
produce 1000
read -r _ end _ < <(status)
wait_uploaded $((end - 100)) 30 >/dev/null
epoch_before=$(ctl --json topic describe events | python3 -c "import json,sys; print(json.load(sys.stdin)['partitions'][0]['leader_epoch'])")
stop
rm -rf "$WORK/data"                           # the disk is lost; the bucket is not
start
read -r recovered_remote _ _ < <(status)
produce 2000
read -r _ end _ < <(status)
took=$(wait_uploaded $((end - 100)) $((UPLOAD_MS * 10 / 1000 + 5)))
epoch_after=$(ctl --json topic describe events | python3 -c "import json,sys; print(json.load(sys.stdin)['partitions'][0]['leader_epoch'])")
sleep $((UPLOAD_MS * 4 / 1000 + 1))          # a few passes of local eviction
bytes=$(local_bytes)
limit=$((LOCAL_RETENTION + 2 * SEGMENT))
echo "recovered remote end $recovered_remote; leader epoch $epoch_before before the wipe, $epoch_after after"
echo "after 2000 more records: uploads caught up to within 100 records of the end in ${took}s"
echo "local log: $bytes bytes (local.retention.bytes + two segments = $limit)"
[ "$epoch_after" -gt "$epoch_before" ] || { echo "FAIL: epoch did not continue above the manifest's" >&2; exit 1; }
[ "$bytes" -le "$limit" ] || { echo "FAIL: local log over its bound" >&2; exit 1; }
echo "OK"
