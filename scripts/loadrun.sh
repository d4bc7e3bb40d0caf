#!/usr/bin/env bash
# Side-by-side load runs of examples/loadtest_server on loopback (needs wrk and
# redis-server; uses ports 6395 and 3100 on 127.0.0.1; bounded: 8 s per run).
set -u
cd "$(dirname "$0")/.."
BIN=target/release/examples/loadtest_server
[ -x "$BIN" ] || cargo build --release --example loadtest_server
redis-server --port 6395 --save "" --appendonly no --daemonize yes >/dev/null
sleep 0.5
run() {
  local name="$1"; shift
  env BIND=127.0.0.1:3100 WORKERS=1 "$@" $BIN > "${TMPDIR:-/tmp}/loadrun-server.log" 2>&1 &
  local pid=$!
  sleep 0.7
  local extra=""
  [ -n "${SCRIPT:-}" ] && extra="-s $SCRIPT"
  local out
  out=$(wrk -t1 -c64 -d8s --latency $extra http://127.0.0.1:3100/api/ping 2>&1)
  kill $pid; wait $pid 2>/dev/null
  local rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  local p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  local non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  printf "%-38s %10s req/s  p50 %8s  p99 %8s  non-2xx %s\n" "$name" "$rps" "$p50" "$p99" "${non2xx:-0}"
}
R=redis://127.0.0.1:6395
for round in 1 2; do
  echo "round $round"
  run "off (no layer)" LIMITER=off
  run "memory, counter, ip" LIMIT=1000000000 ALGORITHM=counter
  run "redis, counter, ip" REDIS_URL=$R LIMIT=1000000000 ALGORITHM=counter
  SCRIPT=scripts/loadrun-keys.lua run "redis, counter, 10k api keys" REDIS_URL=$R KEY=x-api-key LIMIT=1000000000 ALGORITHM=counter
  SCRIPT=scripts/loadrun-keys.lua run "redis, log, 10k api keys" REDIS_URL=$R KEY=x-api-key LIMIT=10000 ALGORITHM=log
  run "redis, counter, ip, flood denied" REDIS_URL=$R LIMIT=10 ALGORITHM=counter
done
redis-cli -p 6395 info commandstats | grep evalsha
redis-cli -p 6395 shutdown nosave
