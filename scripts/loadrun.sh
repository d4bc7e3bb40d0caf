#!/usr/bin/env bash
# One-go load runs: this crate's examples/loadtest_server (LIMITER=off, the
# memory and Redis backends with each algorithm, one hot key, 10 000 keys, a
# denied flood) and the peers of benches/peers (tower_governor,
# tower-rate-limiter with its memory and Redis Lua stores), all behind the
# same axum server, driven by wrk on loopback, one after the other.
#
#   scripts/loadrun.sh                  # the full run, 10 s per configuration (~3 min)
#   DURATION=2s scripts/loadrun.sh      # a quick check of the script (~35 s once built)
#   ONLY='redis' scripts/loadrun.sh     # only the configurations whose name matches
#
# Environment (all optional):
#   DURATION     wrk -d per configuration, at most 10s          (default 10s)
#   THREADS      wrk -t                                           (default 2)
#   CONNECTIONS  wrk -c                                           (default 64)
#   WORKERS      tokio worker threads in each server              (default 1)
#   ONLY         extended regex: run only the matching names      (default: all)
#   OUT          results folder                   (default benches/results)
#   NO_BUILD=1   use the release binaries already built
#   REDIS_PORT, APP_PORT  first loopback ports tried (default 6395, 3100)
# The servers inherit the environment, so e.g. DEADLINE_MS reaches
# loadtest_server; each configuration sets its own LIMITER, REDIS_URL, KEY,
# ALGORITHM and LIMIT.
#
# Needs wrk (Debian package `wrk`: installed here with apt-get when missing and
# running as root), redis-server and redis-cli, cargo, python3 (the chart).
# Redis runs on 127.0.0.1 with `--save "" --appendonly no`, emptied
# (FLUSHALL) before each configuration that uses it; its CPU per request is the
# `INFO cpu` delta (used_cpu_sys + used_cpu_user) over the run divided by the
# requests wrk completed, and its commands per request the `INFO stats`
# total_commands_processed delta divided by the same.
#
# Writes OUT/loadrun.csv, OUT/loadrun.md (table and setting) and
# OUT/loadrun.svg (scripts/loadrun-chart.py).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
WORKERS=${WORKERS:-1}
ONLY=${ONLY:-}
OUT=${OUT:-benches/results}
BIG=1000000000 # a limit never reached

die() { echo "loadrun: $*" >&2; exit 1; }

# Bounded: each wrk run lasts at most 10 s.
if [[ ! $DURATION =~ ^([0-9]+)s?$ ]] || ((BASH_REMATCH[1] < 1 || BASH_REMATCH[1] > 10)); then
  die "DURATION=$DURATION: expected 1s to 10s"
fi
SECS=${BASH_REMATCH[1]}
[[ $THREADS =~ ^[1-9][0-9]?$ ]] || die "THREADS=$THREADS: expected 1 to 99"
[[ $CONNECTIONS =~ ^[1-9][0-9]{0,3}$ ]] || die "CONNECTIONS=$CONNECTIONS: expected 1 to 9999"
((CONNECTIONS >= THREADS)) || die "CONNECTIONS must be at least THREADS"

# --- tools -----------------------------------------------------------------
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "loadrun: installing wrk (apt-get)"
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null ||
      die "could not install wrk: run \`apt-get update && apt-get install -y wrk\`"
  else
    die "wrk is missing: install it (Debian/Ubuntu: \`sudo apt-get install -y wrk\`)"
  fi
fi
for tool in redis-server redis-cli cargo; do
  command -v $tool >/dev/null || die "$tool is missing (redis-server/redis-cli: Debian package \`redis-server\`)"
done

# --- binaries --------------------------------------------------------------
OURS_TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OURS=$OURS_TARGET/release/examples/loadtest_server
PEERS=$ROOT/benches/peers/target/release/loadrun-peers
if [ -z "${NO_BUILD:-}" ]; then
  echo "loadrun: building release binaries"
  cargo build --quiet --release --example loadtest_server
  # tower-rate-limiter's releases declare rust-version 1.96 but compile with
  # older toolchains; the peers have their own workspace and target folder.
  cargo build --quiet --release --ignore-rust-version \
    --manifest-path benches/peers/Cargo.toml --target-dir benches/peers/target
fi
[ -x "$OURS" ] || die "$OURS is missing (run without NO_BUILD)"
[ -x "$PEERS" ] || die "$PEERS is missing (run without NO_BUILD)"

# --- loopback ports, Redis, cleanup ----------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/loadrun.XXXXXX")
REDIS_PID=""
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill -KILL "$SERVER_PID" 2>/dev/null || true; fi
  if [ -n "$REDIS_PID" ]; then kill -TERM "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  for ((p = $1; p < $1 + 100; p++)); do
    listening "$p" || { echo "$p"; return; }
  done
  die "no free loopback port from $1 to $(($1 + 99))"
}
RP=$(free_port "${REDIS_PORT:-6395}")
AP=$(free_port "${APP_PORT:-3100}")
[ "$RP" != "$AP" ] || AP=$(free_port $((AP + 1)))
REDIS_URL_LOCAL=redis://127.0.0.1:$RP
rcli() { redis-cli -p "$RP" "$@"; }

redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize no --logfile "$TMP/redis.log" &
REDIS_PID=$!
for _ in $(seq 50); do
  [ "$(rcli ping 2>/dev/null)" = PONG ] && break
  sleep 0.1
done
[ "$(rcli ping 2>/dev/null)" = PONG ] || die "redis-server did not start: $(cat "$TMP/redis.log")"
REDIS_VERSION=$(rcli info server | tr -d '\r' | awk -F: '$1=="redis_version" {print $2}')

# INFO fields: Redis CPU seconds (sys + user) and commands processed.
redis_cpu() { rcli info cpu | tr -d '\r' | awk -F: '$1=="used_cpu_sys" || $1=="used_cpu_user" {s += $2} END {printf "%.6f", s}'; }
redis_cmds() { rcli info stats | tr -d '\r' | awk -F: '$1=="total_commands_processed" {print $2}'; }

# wrk's latency (e.g. 512.00us, 1.23ms, 1.02s) in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v == "") { print ""; exit }
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
    printf "%.3f", n }'
}

# --- one configuration -----------------------------------------------------
# run NAME GROUP (NAME without commas) BINARY-ARGS... -- ENV...   (GROUP: base | memory | redis | peer-memory | peer-redis)
# WRK_SCRIPT (variable) adds `-s` to wrk. Appends a CSV row.
CSV="$TMP/rows.csv"
: >"$CSV"
OFF_RPS=""
run() {
  local name=$1 group=$2; shift 2
  local args=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do args+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  if [ -n "$ONLY" ] && [[ ! $name =~ $ONLY ]] && [ "$name" != off ]; then return; fi
  local uses_redis=""
  [[ $group == *redis ]] && uses_redis=1
  [ -n "$uses_redis" ] && rcli flushall sync >/dev/null

  # Defaults first, so that a REDIS_URL, KEY or LIMITER exported by the caller
  # does not change a configuration; the configuration's own values follow.
  env BIND="127.0.0.1:$AP" WORKERS="$WORKERS" LIMITER=on REDIS_URL= KEY=ip ALGORITHM=counter \
    "$@" "${args[@]}" >"$TMP/server.log" 2>&1 &
  SERVER_PID=$!
  local up=""
  for _ in $(seq 100); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    if listening "$AP"; then up=1; break; fi
    sleep 0.1
  done
  if [ -z "$up" ]; then
    local status=0
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || status=$?
    SERVER_PID=""
    local why
    why=$(tr '\n' ' ' <"$TMP/server.log" | sed "s/,/;/g; s/\"/'/g" | cut -c1-160)
    printf "%-34s not run: server exited (status %s): %s\n" "$name" "$status" "$why"
    echo "$name,$group,,,,,,,,,,not run: $why" >>"$CSV"
    return
  fi

  local cpu0="" cmd0="" cpu1="" cmd1=""
  if [ -n "$uses_redis" ]; then cpu0=$(redis_cpu); cmd0=$(redis_cmds); fi
  local script=()
  [ -n "${WRK_SCRIPT:-}" ] && script=(-s "$WRK_SCRIPT")
  local out
  out=$(timeout $((SECS + 20)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${SECS}s" --latency "${script[@]}" \
    "http://127.0.0.1:$AP/api/ping" 2>&1) || true
  if [ -n "$uses_redis" ]; then cpu1=$(redis_cpu); cmd1=$(redis_cmds); fi
  kill -INT "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""

  local rps p50 p99 non2xx requests errors
  rps=$(echo "$out" | awk '/^Requests\/sec/ {printf "%.0f", $2}')
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  p50=$(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')")
  p99=$(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  non2xx=${non2xx:-0}
  errors=$(echo "$out" | awk '/Socket errors/ {gsub(/,/, ""); print $4 + $6 + $8 + $10}')
  errors=${errors:-0}
  if [ -z "$rps" ] || [ -z "$requests" ]; then
    local why
    why=$(echo "$out" | tr '\n' ' ' | sed "s/,/;/g; s/\"/'/g" | cut -c1-160)
    printf "%-34s failed: %s\n" "$name" "$why"
    echo "$name,$group,,,,,,,,,,failed: $why" >>"$CSV"
    return
  fi
  [ "$name" = off ] && OFF_RPS=$rps
  local ratio="" cpu_us="" cmds=""
  [ -n "$OFF_RPS" ] && ratio=$(awk -v a="$rps" -v b="$OFF_RPS" 'BEGIN {printf "%.2f", a / b}')
  if [ -n "$uses_redis" ] && [ "$requests" -gt 0 ]; then
    cpu_us=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$requests" 'BEGIN {printf "%.2f", (b - a) * 1e6 / n}')
    cmds=$(awk -v a="$cmd0" -v b="$cmd1" -v n="$requests" 'BEGIN {printf "%.3f", (b - a - 2) / n}')
  fi
  printf "%-34s %9s %8s %8s %9s %7s %6s %9s %9s\n" "$name" "$rps" "$p50" "$p99" "$non2xx" "$errors" \
    "${ratio:--}" "${cpu_us:--}" "${cmds:--}"
  echo "$name,$group,$rps,$requests,$p50,$p99,$non2xx,$errors,$ratio,$cpu_us,$cmds," >>"$CSV"
}

# --- the configurations ----------------------------------------------------
LOG_LIMIT=10000 # the sliding log's largest limit (MAX_LOG_LIMIT): 10 000 keys keep each client under it
KEYS_LUA=scripts/loadrun-keys.lua
START=$(date +%s)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo
echo "wrk -t$THREADS -c$CONNECTIONS -d${SECS}s --latency, WORKERS=$WORKERS, redis $REDIS_VERSION on 127.0.0.1:$RP, server on 127.0.0.1:$AP"
printf "%-34s %9s %8s %8s %9s %7s %6s %9s %9s\n" name req/s p50_ms p99_ms non-2xx errors ratio redis_us redis_cmd
run off base "$OURS" -- LIMITER=off
run "peers: bare axum" base "$PEERS" bare --
for algorithm in counter gcra; do
  run "memory $algorithm (hot key)" memory "$OURS" -- LIMIT=$BIG ALGORITHM=$algorithm
done
WRK_SCRIPT=$KEYS_LUA run "memory log (10k keys)" memory "$OURS" -- LIMIT=$LOG_LIMIT ALGORITHM=log KEY=x-api-key
for algorithm in counter gcra; do
  run "redis $algorithm (hot key)" redis "$OURS" -- REDIS_URL=$REDIS_URL_LOCAL LIMIT=$BIG ALGORITHM=$algorithm
done
WRK_SCRIPT=$KEYS_LUA run "redis log (10k keys)" redis "$OURS" -- REDIS_URL=$REDIS_URL_LOCAL LIMIT=$LOG_LIMIT ALGORITHM=log KEY=x-api-key
WRK_SCRIPT=$KEYS_LUA run "redis log limit 100 (10k keys)" redis "$OURS" -- REDIS_URL=$REDIS_URL_LOCAL LIMIT=100 ALGORITHM=log KEY=x-api-key
WRK_SCRIPT=$KEYS_LUA run "redis gcra (10k keys)" redis "$OURS" -- REDIS_URL=$REDIS_URL_LOCAL LIMIT=$BIG ALGORITHM=gcra KEY=x-api-key
WRK_SCRIPT=$KEYS_LUA run "redis counter (10k keys)" redis "$OURS" -- REDIS_URL=$REDIS_URL_LOCAL LIMIT=$BIG ALGORITHM=counter KEY=x-api-key
run "redis counter (denied flood)" redis "$OURS" -- REDIS_URL=$REDIS_URL_LOCAL LIMIT=10 ALGORITHM=counter
run "governor (hot key)" peer-memory "$PEERS" governor -- LIMIT=$BIG
run "trl-memory (hot key)" peer-memory "$PEERS" trl-memory -- LIMIT=$BIG
run "trl-redis (hot key)" peer-redis "$PEERS" trl-redis -- REDIS_URL=$REDIS_URL_LOCAL LIMIT=$BIG
WRK_SCRIPT=$KEYS_LUA run "trl-redis (10k keys)" peer-redis "$PEERS" trl-redis -- REDIS_URL=$REDIS_URL_LOCAL LIMIT=$BIG KEY=x-api-key
run "trl-redis (denied flood)" peer-redis "$PEERS" trl-redis -- REDIS_URL=$REDIS_URL_LOCAL LIMIT=10
ELAPSED=$(($(date +%s) - START))
echo "runs took ${ELAPSED}s"

# --- results -----------------------------------------------------------------
mkdir -p "$OUT"
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
SETTING="wrk -t$THREADS -c$CONNECTIONS -d${SECS}s --latency on loopback; WORKERS=$WORKERS; redis-server $REDIS_VERSION (--save \"\" --appendonly no); $(nproc) cores; load average before: $LOAD_BEFORE; commit $REV; $(date -u +%Y-%m-%dT%H:%MZ)"
{
  echo "# $SETTING"
  echo "name,group,req_per_s,requests,p50_ms,p99_ms,non_2xx,socket_errors,ratio_vs_off,redis_cpu_us_per_req,redis_cmds_per_req,note"
  cat "$CSV"
} >"$OUT/loadrun.csv"
{
  echo "Setting: $SETTING"
  echo
  echo "| configuration | req/s | p50 ms | p99 ms | non-2xx | ratio vs off | Redis CPU µs/req | Redis cmds/req (incl. inside scripts) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  while IFS=, read -r name group rps requests p50 p99 non2xx errors ratio cpu_us cmds note; do
    if [ -n "$note" ]; then
      echo "| $name | $note | | | | | | |"
    else
      echo "| $name | $rps | $p50 | $p99 | $non2xx | ${ratio:--} | ${cpu_us:--} | ${cmds:--} |"
    fi
  done <"$CSV"
} >"$OUT/loadrun.md"
if command -v python3 >/dev/null; then
  python3 scripts/loadrun-chart.py "$OUT/loadrun.csv" "$OUT/loadrun.svg"
else
  echo "loadrun: python3 is missing: no chart (run scripts/loadrun-chart.py later)" >&2
fi
echo "wrote $OUT/loadrun.csv, $OUT/loadrun.md, $OUT/loadrun.svg"
