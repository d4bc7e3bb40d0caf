#!/usr/bin/env bash
# Redis CPU per script call, old scripts against new, side by side in one run.
#
# Spawns a throwaway redis-server on 127.0.0.1 (a free port from 6400 up, no
# persistence), loads each script with SCRIPT LOAD, runs redis-benchmark with
# EVALSHA against it (pipelined, -P 16, one connection per client) and reads
# `usec_per_call` of `cmdstat_evalsha` from INFO commandstats after a
# CONFIG RESETSTAT. The "old" scripts are those of commit $OLD (before the
# lean rewrite), read with `git show`; the new ones are the working tree's.
#
# Usage: scripts/script-cost.sh [requests per case, default 200000] [rounds, default 2]
# Needs redis-server, redis-cli and redis-benchmark (apt-get install redis-server
# redis-tools). Bounded: a few seconds per case.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
ROUNDS=${2:-2}
OLD=${OLD:-85d9c3f}
for bin in redis-server redis-cli redis-benchmark; do
  command -v "$bin" >/dev/null || { echo "$bin not found: apt-get install redis-server redis-tools" >&2; exit 1; }
done

PORT=6400
while redis-cli -p "$PORT" ping >/dev/null 2>&1; do PORT=$((PORT + 1)); done
DIR=$(mktemp -d)
redis-server --bind 127.0.0.1 --port "$PORT" --save "" --appendonly no \
  --dir "$DIR" --daemonize yes --logfile "$DIR/redis.log" --pidfile "$DIR/redis.pid"
trap 'redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
CLI=(redis-cli -p "$PORT")

load() { "${CLI[@]}" script load "$1"; }
old() { git show "$OLD:src/algorithm/$1"; }
new() { cat "src/algorithm/$1"; }

# name | script source | key pattern | limit | window (us) | clients (-r)
# Limits far above the traffic: every call admits (the write path). The log
# at limit 100: 1 000 clients, N/4 calls, so its sets hold up to about 100
# entries and nearly every call still admits.
cases=(
  "counter, old (hash)|$(old sliding_window.lua)|rl:{api:__rand_int__}:w60000|1000000000|60000000|10000|$N"
  "counter, new (string)|$(new sliding_window.lua)|rl:{api:__rand_int__}:c60000|1000000000|60000000|10000|$N"
  "gcra|$(new gcra.lua)|rl:{api:__rand_int__}:g60000|1000000000|60000000|10000|$N"
  "log limit 100, old|$(old sliding_log.lua)|rl:{auth:__rand_int__}:l60000|100|60000000|1000|$((N / 4))"
  "log limit 100, new|$(new sliding_log.lua)|rl:{auth:__rand_int__}:l60000|100|60000000|1000|$((N / 4))"
  "counter peek, old|$(old sliding_window_peek.lua)|rl:{api:__rand_int__}:w60000|1000000000|60000000|10000|$N"
  "counter peek, new|$(new sliding_window_peek.lua)|rl:{api:__rand_int__}:c60000|1000000000|60000000|10000|$N"
  "gcra peek|$(new gcra_peek.lua)|rl:{api:__rand_int__}:g60000|1000000000|60000000|10000|$N"
)

printf "%-24s %s\n" "script" "usec_per_call by round"
for ((round = 1; round <= ROUNDS; round++)); do
  "${CLI[@]}" flushall >/dev/null
  for c in "${cases[@]}"; do
    IFS='|' read -r name src key limit window clients n <<<"$c"
    sha=$(load "$src")
    "${CLI[@]}" config resetstat >/dev/null
    redis-benchmark -h 127.0.0.1 -p "$PORT" -n "$n" -c 8 -P 16 -r "$clients" -q \
      evalsha "$sha" 1 "$key" 1 "__rand_int__" "$limit" "$window" >/dev/null
    usec=$("${CLI[@]}" info commandstats | tr -d '\r' |
      awk -F'[=,]' '/^cmdstat_evalsha:/ {print $6}')
    errs=$("${CLI[@]}" info errorstats | tr -d '\r' | grep -c '^errorstat' || true)
    printf "round %d  %-24s %6s us%s\n" "$round" "$name" "$usec" \
      "$([ "$errs" = 0 ] || echo "  ($errs error kinds!)")"
  done
done
