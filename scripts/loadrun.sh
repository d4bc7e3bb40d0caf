#!/usr/bin/env bash
# One-go load runs: this crate's examples/loadtest_server (LIMITER=off, the
# memory and Redis backends with each algorithm, a 3-master Redis Cluster)
# and the peers of benches/peers (tower_governor, tower-rate-limiter with its
# memory and Redis Lua stores), all behind the same axum server, driven by wrk
# on loopback, one after the other, for one hot key, 10 000 and 100 000
# distinct x-api-key values. Then the issue's targets, computed from the rows
# of this run, marked met or missed.
#
#   scripts/loadrun.sh                  # the full run: 32 configurations, 10 s each (~6 min once built)
#   DURATION=1s scripts/loadrun.sh      # a quick check of the script (~1 min once built)
#   ONLY='10k' scripts/loadrun.sh       # only the configurations whose name matches (and off)
#
# Before and after a change (app CPU beyond off, req/s): build the earlier
# commit's example in a worktree of its own, run it, then pass its CSV:
#   LOADTEST_SERVER=../old/target/release/examples/loadtest_server OUT=/tmp/before scripts/loadrun.sh
#   BEFORE=/tmp/before/loadrun.csv scripts/loadrun.sh
#
# Environment (all optional):
#   DURATION     wrk -d per configuration, 1s to 10s              (default 10s)
#   THREADS      wrk -t                                           (default 2)
#   CONNECTIONS  wrk -c                                           (default 64)
#   WORKERS      tokio worker threads in each server              (default 1)
#   ONLY         extended regex: run only the matching names      (default: all)
#                (`off` always runs: the ratios and "beyond off" need it)
#   OUT          results folder                   (default benches/results)
#   NO_BUILD=1   use the release binaries already built
#   LOADTEST_SERVER  another loadtest_server binary (e.g. an earlier commit's
#                build, for a "before" run; never built here); a row whose
#                backend the binary does not print is "not run"
#   BEFORE       the loadrun.csv of an earlier run (e.g. made with
#                LOADTEST_SERVER): adds a before/after table of app CPU
#                beyond off and req/s
#   REDIS_PORT, APP_PORT, CLUSTER_PORT  first loopback ports tried
#                (default 6395, 3100, 7395; a cluster node also needs its
#                port + 10000 free, the cluster bus)
# The servers inherit the environment, so e.g. DEADLINE_MS or BATCH reach
# loadtest_server; each configuration sets its own LIMITER, REDIS_URL,
# REDIS_CLUSTER, KEY, ALGORITHM, LIMIT and HEADERS.
#
# Every request carries an x-api-key header (scripts/loadrun-keys.lua, with
# LOADRUN_KEYS distinct values) and every limiter keys by it; `off` is run with
# the 10 000-key script, so that wrk does the same work in every row.
#
# Measures, per configuration:
# - req/s, p50 and p99 latency, non-2xx responses and socket errors (wrk);
# - the server's CPU: utime + stime of /proc/<pid>/stat (all its threads)
#   before and after wrk, as % of one core over wrk's wall time ("app CPU %")
#   and per request completed ("app µs/req"), and the latter minus off's
#   ("beyond off": the limiter's own cost per decision);
# - for the rows that use Redis: its CPU per request, the `INFO cpu` delta
#   (used_cpu_sys + used_cpu_user) over the run divided by the requests wrk
#   completed, and its commands per request, the `INFO stats`
#   total_commands_processed delta (commands run inside scripts included),
#   each summed over the nodes for the cluster.
#
# Needs wrk (Debian package `wrk`: installed here with apt-get when missing and
# running as root), redis-server and redis-cli (7.x, with --cluster), cargo,
# python3 (the targets and the chart). Redis runs on 127.0.0.1 with
# `--save "" --appendonly no`, emptied (FLUSHALL) before each configuration
# that uses it; the cluster (3 masters, no replicas) is started only when a
# cluster configuration is selected. Everything started here is stopped at
# exit, Ctrl-C included.
#
# Writes OUT/loadrun.csv, OUT/loadrun.md (table, targets, setting) and
# OUT/loadrun.svg (scripts/loadrun-chart.py); the targets table is
# scripts/loadrun-targets.py's.
set -euo pipefail
# Paths given by the caller are relative to the caller's folder.
BEFORE=${BEFORE:+$(realpath -m "$BEFORE")}
LOADTEST_SERVER=${LOADTEST_SERVER:+$(realpath -m "$LOADTEST_SERVER")}
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
WORKERS=${WORKERS:-1}
ONLY=${ONLY:-}
OUT=${OUT:-benches/results}
BIG=1000000000 # a limit never reached
LOG_LIMIT=10000 # the sliding log's largest limit (MAX_LOG_LIMIT): 10 000 keys and more keep each client under it
KEYS_LUA=scripts/loadrun-keys.lua

die() { echo "loadrun: $*" >&2; exit 1; }

# Bounded: each wrk run lasts at most 10 s.
if [[ ! $DURATION =~ ^([0-9]+)s?$ ]] || ((BASH_REMATCH[1] < 1 || BASH_REMATCH[1] > 10)); then
  die "DURATION=$DURATION: expected 1s to 10s"
fi
SECS=${BASH_REMATCH[1]}
[[ $THREADS =~ ^[1-9][0-9]?$ ]] || die "THREADS=$THREADS: expected 1 to 99"
[[ $CONNECTIONS =~ ^[1-9][0-9]{0,3}$ ]] || die "CONNECTIONS must be 1 to 9999"
((CONNECTIONS >= THREADS)) || die "CONNECTIONS must be at least THREADS"
[ -z "$BEFORE" ] || [ -r "$BEFORE" ] || die "BEFORE=$BEFORE: no such file"
[ -z "$ONLY" ] || { [[ x =~ $ONLY ]] || [ $? -ne 2 ]; } || die "ONLY=$ONLY: not an extended regex"

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
for tool in redis-server redis-cli cargo python3; do
  command -v $tool >/dev/null || die "$tool is missing (redis-server/redis-cli: Debian package \`redis-server\`)"
done
[ -r /proc/self/stat ] || die "/proc is missing: the app CPU is read from /proc/<pid>/stat"
TICKS=$(getconf CLK_TCK)

# --- the configurations ----------------------------------------------------
# Each line: run NAME GROUP KEYS BINARY-ARGS... -- ENV...
#   NAME   unique, without commas; scripts/loadrun-targets.py finds rows by it
#   GROUP  base | memory | redis | redis-cluster | peer-memory | peer-redis
#   KEYS   distinct x-api-key values (LOADRUN_KEYS of the wrk script)
# The limiters key by x-api-key and never deny (LIMIT=$BIG, or LOG_LIMIT with
# 10 000 keys or more), except the two denied floods (LIMIT=10, one key).
configurations() {
  local us=$OURS peers=$PEERS redis=REDIS_URL=$REDIS_URL_LOCAL cluster=REDIS_CLUSTER=$CLUSTER_URLS
  local k=KEY=x-api-key
  run off base 10000 "$us" -- LIMITER=off
  run "peers bare" base 10000 "$peers" bare --
  local set keys
  for set in hot 10k 100k; do
    case $set in hot) keys=1 ;; 10k) keys=10000 ;; 100k) keys=100000 ;; esac
    for algorithm in counter gcra; do
      run "memory $algorithm $set" memory $keys "$us" -- $k LIMIT=$BIG ALGORITHM=$algorithm
    done
    # One key cannot stay within the sliding log's largest limit.
    [ $set = hot ] || run "memory log $set" memory $keys "$us" -- $k LIMIT=$LOG_LIMIT ALGORITHM=log
    [ $set != 10k ] || for algorithm in counter gcra; do
      run "memory $algorithm 10k headers none" memory $keys "$us" -- $k LIMIT=$BIG ALGORITHM=$algorithm HEADERS=none
    done
    for algorithm in counter gcra; do
      run "redis $algorithm $set" redis $keys "$us" -- $k "$redis" LIMIT=$BIG ALGORITHM=$algorithm
    done
    [ $set = hot ] || run "redis log $set" redis $keys "$us" -- $k "$redis" LIMIT=$LOG_LIMIT ALGORITHM=log
    [ $set != 10k ] || run "redis counter 10k cluster" redis-cluster $keys "$us" -- $k "$cluster" LIMIT=$BIG ALGORITHM=counter
    run "governor $set" peer-memory $keys "$peers" governor -- $k LIMIT=$BIG
    run "trl-memory $set" peer-memory $keys "$peers" trl-memory -- $k LIMIT=$BIG
    run "trl-redis $set" peer-redis $keys "$peers" trl-redis -- $k "$redis" LIMIT=$BIG
  done
  run "redis counter hot denied" redis 1 "$us" -- $k "$redis" LIMIT=10 ALGORITHM=counter
  run "trl-redis hot denied" peer-redis 1 "$peers" trl-redis -- $k "$redis" LIMIT=10
}

selected() { [ "$1" = off ] || [ -z "$ONLY" ] || [[ $1 =~ $ONLY ]]; }

# A first pass only counts: how many configurations, which servers they need.
PLANNED=0
NEED_REDIS=""
NEED_CLUSTER=""
run() {
  selected "$1" || return 0
  PLANNED=$((PLANNED + 1))
  case $2 in redis | peer-redis) NEED_REDIS=1 ;; redis-cluster) NEED_CLUSTER=1 ;; esac
}
OURS="" PEERS="" REDIS_URL_LOCAL="" CLUSTER_URLS=""
configurations
echo "loadrun: $PLANNED configurations of ${SECS}s each: about $(((PLANNED * (SECS + 1) + 59) / 60)) min once built"

# --- binaries --------------------------------------------------------------
OURS_TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OURS=${LOADTEST_SERVER:-$OURS_TARGET/release/examples/loadtest_server}
PEERS=$ROOT/benches/peers/target/release/loadrun-peers
if [ -z "${NO_BUILD:-}" ]; then
  echo "loadrun: building release binaries"
  # `cluster`: REDIS_CLUSTER (the cluster row).
  [ -n "${LOADTEST_SERVER:-}" ] ||
    cargo build --quiet --release --features cluster --example loadtest_server
  # tower-rate-limiter's releases declare rust-version 1.96 but compile with
  # older toolchains; the peers have their own workspace and target folder.
  cargo build --quiet --release --ignore-rust-version \
    --manifest-path benches/peers/Cargo.toml --target-dir benches/peers/target
fi
[ -x "$OURS" ] || die "$OURS is missing (run without NO_BUILD)"
[ -x "$PEERS" ] || die "$PEERS is missing (run without NO_BUILD)"

# --- cleanup -----------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/loadrun.XXXXXX")
SERVER_PID=""
WRK_PID=""
REDIS_PIDS=()
cleanup() {
  if [ -n "$WRK_PID" ]; then kill -TERM "$WRK_PID" 2>/dev/null || true; fi
  if [ -n "$SERVER_PID" ]; then kill -KILL "$SERVER_PID" 2>/dev/null || true; fi
  local pid
  for pid in "${REDIS_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${REDIS_PIDS[@]}" $WRK_PID $SERVER_PID; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- loopback ports, Redis -----------------------------------------------------
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
TAKEN=" "
# free_port FIRST [BUS]: the first port from FIRST nobody listens on and not
# handed out before (BUS: port + 10000 free too); recorded in PORT.
free_port() {
  local p
  for ((p = $1; p < $1 + 200; p++)); do
    [[ $TAKEN == *" $p "* ]] && continue
    listening "$p" && continue
    if [ -n "${2:-}" ]; then
      [[ $TAKEN == *" $((p + 10000)) "* ]] && continue
      listening $((p + 10000)) && continue
      TAKEN+="$((p + 10000)) "
    fi
    TAKEN+="$p "
    PORT=$p
    return
  done
  die "no free loopback port from $1 to $(($1 + 199))"
}
free_port "${APP_PORT:-3100}"
AP=$PORT

# start_redis PORT [ARGS...]: a redis-server on 127.0.0.1:PORT, in TMP.
start_redis() {
  local port=$1; shift
  mkdir -p "$TMP/redis-$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --dir "$TMP/redis-$port" --logfile "$TMP/redis-$port/log" "$@" &
  REDIS_PIDS+=($!)
  local _
  for _ in $(seq 50); do
    [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && return
    sleep 0.1
  done
  die "redis-server on port $port did not start: $(cat "$TMP/redis-$port/log")"
}

REDIS_VERSION=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
REDIS_URL_LOCAL=""
RP=""
if [ -n "$NEED_REDIS" ]; then
  free_port "${REDIS_PORT:-6395}"
  RP=$PORT
  start_redis "$RP"
  REDIS_URL_LOCAL=redis://127.0.0.1:$RP
fi
CLUSTER_PORTS=()
CLUSTER_URLS=""
if [ -n "$NEED_CLUSTER" ]; then
  port=${CLUSTER_PORT:-7395}
  for _ in 1 2 3; do
    free_port "$port" bus
    CLUSTER_PORTS+=("$PORT")
    start_redis "$PORT" --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 5000
    port=$((PORT + 1))
  done
  nodes=()
  for p in "${CLUSTER_PORTS[@]}"; do nodes+=("127.0.0.1:$p"); done
  timeout 30 redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes \
    >"$TMP/cluster-create.log" 2>&1 || die "redis-cli --cluster create failed: $(tail -5 "$TMP/cluster-create.log")"
  for p in "${CLUSTER_PORTS[@]}"; do
    ok=""
    for _ in $(seq 100); do
      if redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; then ok=1; break; fi
      sleep 0.1
    done
    [ -n "$ok" ] || die "the cluster node on port $p is not ok after 10 s"
  done
  CLUSTER_URLS=$(printf 'redis://127.0.0.1:%s,' "${CLUSTER_PORTS[@]}")
  CLUSTER_URLS=${CLUSTER_URLS%,}
fi

# The Redis ports a group uses (none, the server, or the cluster's nodes).
redis_ports() {
  case $1 in
    redis | peer-redis) echo "$RP" ;;
    redis-cluster) echo "${CLUSTER_PORTS[*]}" ;;
  esac
}
# Summed over PORTS...: Redis CPU seconds (sys + user), commands processed.
redis_cpu() {
  local p
  for p in "$@"; do redis-cli -p "$p" info cpu; done |
    tr -d '\r' | awk -F: '$1=="used_cpu_sys" || $1=="used_cpu_user" {s += $2} END {printf "%.6f", s}'
}
redis_cmds() {
  local p
  for p in "$@"; do redis-cli -p "$p" info stats; done |
    tr -d '\r' | awk -F: '$1=="total_commands_processed" {s += $2} END {print s + 0}'
}
# The CPU ticks (utime + stime, all threads) of process PID; fields after the
# `(comm)` one, which may hold spaces.
app_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
now() { date +%s.%N; }

# wrk's latency (e.g. 512.00us, 1.23ms, 1.02s) in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v == "") { print ""; exit }
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
    printf "%.3f", n }'
}
# A message as one CSV field.
field() { tr '\n' ' ' | sed "s/,/;/g; s/\"/'/g" | cut -c1-160; }

# --- one configuration -------------------------------------------------------
CSV="$TMP/rows.csv"
: >"$CSV"
OFF_RPS=""
OFF_APP_US=""
FORMAT="%-31s %6s %8s %5s %7s %7s %8s %6s %5s %7s %7s %8s %8s\n"
run() {
  local name=$1 group=$2 keys=$3; shift 3
  selected "$name" || return 0
  local args=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do args+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  local ports
  read -r -a ports <<<"$(redis_ports "$group")"
  local p
  for p in "${ports[@]}"; do redis-cli -p "$p" flushall sync >/dev/null; done

  # Defaults first, so that a REDIS_URL, KEY or LIMITER exported by the caller
  # does not change a configuration; the configuration's own values follow.
  env BIND="127.0.0.1:$AP" WORKERS="$WORKERS" LIMITER=on REDIS_URL= REDIS_CLUSTER= KEY=ip \
    ALGORITHM=counter HEADERS= "$@" "${args[@]}" >"$TMP/server.log" 2>&1 &
  SERVER_PID=$!
  local up=""
  for _ in $(seq 100); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    if listening "$AP"; then up=1; break; fi
    sleep 0.1
  done
  # Our server names its backend: a binary that ignores a variable (an
  # older build, one without the `cluster` feature) must not pass for it.
  local expect="" why=""
  case $group in
    memory) expect="backend: in-memory" ;;
    redis) expect="backend: redis at" ;;
    redis-cluster) expect="backend: redis cluster at" ;;
  esac
  if [ -z "$up" ]; then
    why="server exited"
  elif [ -n "$expect" ] && ! grep -q "^$expect" "$TMP/server.log"; then
    why="the server did not print '$expect'"
  fi
  if [ -n "$why" ]; then
    local status=0
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || status=$?
    SERVER_PID=""
    [ -n "$up" ] || why="$why (status $status)"
    why="$why: $(field <"$TMP/server.log")"
    printf "%-31s not run: %s\n" "$name" "$why"
    echo "$name,$group,$keys,,,,,,,,,,,,,not run: $(echo "$why" | field)" >>"$CSV"
    return
  fi

  local cpu0="" cmd0="" cpu1="" cmd1="" ticks0 ticks1 t0 t1
  if [ ${#ports[@]} -gt 0 ]; then cpu0=$(redis_cpu "${ports[@]}"); cmd0=$(redis_cmds "${ports[@]}"); fi
  ticks0=$(app_ticks "$SERVER_PID" 2>/dev/null || echo "")
  t0=$(now)
  LOADRUN_KEYS=$keys timeout $((SECS + 20)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${SECS}s" --latency \
    -s "$KEYS_LUA" "http://127.0.0.1:$AP/api/ping" >"$TMP/wrk.out" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || true
  WRK_PID=""
  t1=$(now)
  ticks1=$(app_ticks "$SERVER_PID" 2>/dev/null || echo "")
  if [ ${#ports[@]} -gt 0 ]; then cpu1=$(redis_cpu "${ports[@]}"); cmd1=$(redis_cmds "${ports[@]}"); fi
  kill -INT "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""

  local out rps p50 p99 non2xx requests errors
  out=$(cat "$TMP/wrk.out")
  rps=$(echo "$out" | awk '/^Requests\/sec/ {printf "%.0f", $2}')
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  p50=$(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')")
  p99=$(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  non2xx=${non2xx:-0}
  errors=$(echo "$out" | awk '/Socket errors/ {gsub(/,/, ""); print $4 + $6 + $8 + $10}')
  errors=${errors:-0}
  if [ -z "$rps" ] || [ -z "$requests" ] || [ "$requests" -eq 0 ] || [ -z "$ticks0" ] || [ -z "$ticks1" ]; then
    local why
    why=$(echo "$out" | field)
    [ -n "$ticks0" ] && [ -n "$ticks1" ] || why="the server died during the run: $(field <"$TMP/server.log")"
    printf "%-31s failed: %s\n" "$name" "$why"
    echo "$name,$group,$keys,,,,,,,,,,,,,failed: $why" >>"$CSV"
    return
  fi
  local app_pct app_us beyond="" ratio="" cpu_us="" cmds=""
  app_pct=$(awk -v a="$ticks0" -v b="$ticks1" -v hz="$TICKS" -v t0="$t0" -v t1="$t1" \
    'BEGIN {printf "%.0f", (b - a) / hz / (t1 - t0) * 100}')
  app_us=$(awk -v a="$ticks0" -v b="$ticks1" -v hz="$TICKS" -v n="$requests" \
    'BEGIN {printf "%.2f", (b - a) / hz * 1e6 / n}')
  if [ "$name" = off ]; then OFF_RPS=$rps; OFF_APP_US=$app_us; fi
  if [ -n "$OFF_RPS" ]; then
    ratio=$(awk -v a="$rps" -v b="$OFF_RPS" 'BEGIN {printf "%.2f", a / b}')
    [ "$name" = off ] || beyond=$(awk -v a="$app_us" -v b="$OFF_APP_US" 'BEGIN {printf "%.2f", a - b}')
  fi
  if [ ${#ports[@]} -gt 0 ]; then
    cpu_us=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$requests" 'BEGIN {printf "%.2f", (b - a) * 1e6 / n}')
    # Minus the two INFO commands counted in the delta, per node.
    cmds=$(awk -v a="$cmd0" -v b="$cmd1" -v n="$requests" -v k="${#ports[@]}" \
      'BEGIN {printf "%.3f", (b - a - 2 * k) / n}')
  fi
  printf "$FORMAT" "$name" "$keys" "$rps" "${ratio:--}" "$p50" "$p99" "$non2xx" "$errors" \
    "$app_pct" "$app_us" "${beyond:--}" "${cpu_us:--}" "${cmds:--}"
  echo "$name,$group,$keys,$rps,$requests,$p50,$p99,$non2xx,$errors,$ratio,$app_pct,$app_us,$beyond,$cpu_us,$cmds," >>"$CSV"
}

# --- the runs ------------------------------------------------------------------
START=$(date +%s)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo
echo "wrk -t$THREADS -c$CONNECTIONS -d${SECS}s --latency, WORKERS=$WORKERS, redis $REDIS_VERSION${RP:+ on 127.0.0.1:$RP}${CLUSTER_URLS:+, cluster ${CLUSTER_PORTS[*]}}, server on 127.0.0.1:$AP"
printf "$FORMAT" name keys req/s ×off p50_ms p99_ms non-2xx errors app_% app_us +off_us redis_us redis_cmd
configurations
ELAPSED=$(($(date +%s) - START))
echo "runs took ${ELAPSED}s"

# --- results -------------------------------------------------------------------
mkdir -p "$OUT"
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
SETTING="wrk -t$THREADS -c$CONNECTIONS -d${SECS}s --latency on loopback; x-api-key keyed; WORKERS=$WORKERS; redis-server $REDIS_VERSION (--save \"\" --appendonly no); $(nproc) cores; load average before: $LOAD_BEFORE; commit $REV; $(date -u +%Y-%m-%dT%H:%MZ)"
{
  echo "# $SETTING"
  echo "name,group,keys,req_per_s,requests,p50_ms,p99_ms,non_2xx,socket_errors,ratio_vs_off,app_cpu_pct,app_cpu_us_per_req,app_cpu_us_beyond_off,redis_cpu_us_per_req,redis_cmds_per_req,note"
  cat "$CSV"
} >"$OUT/loadrun.csv"
TARGETS=$(python3 scripts/loadrun-targets.py "$OUT/loadrun.csv" ${BEFORE:+--before "$BEFORE"})
{
  echo "Setting: $SETTING"
  echo
  echo "App CPU: the server process's utime + stime over the run (% of one core; µs per request; \"beyond off\": minus LIMITER=off's µs per request). Redis: \`INFO cpu\` and \`INFO stats\` deltas per request (summed over the cluster's nodes)."
  echo
  echo "| configuration | keys | req/s | × off | p50 ms | p99 ms | non-2xx | app CPU % | app µs/req | beyond off µs/req | Redis CPU µs/req | Redis cmds/req |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  while IFS=, read -r name group keys rps requests p50 p99 non2xx errors ratio app_pct app_us beyond cpu_us cmds note; do
    if [ -n "$note" ]; then
      echo "| $name | $keys | $note | | | | | | | | | |"
    else
      echo "| $name | $keys | $rps | ${ratio:--} | $p50 | $p99 | $non2xx | $app_pct | $app_us | ${beyond:--} | ${cpu_us:--} | ${cmds:--} |"
    fi
  done <"$CSV"
  echo
  echo "$TARGETS"
} >"$OUT/loadrun.md"
echo
echo "$TARGETS"
python3 scripts/loadrun-chart.py "$OUT/loadrun.csv" "$OUT/loadrun.svg"
echo "wrote $OUT/loadrun.csv, $OUT/loadrun.md, $OUT/loadrun.svg"
