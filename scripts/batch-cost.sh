#!/usr/bin/env bash
# Redis CPU per decision of the batch script, old against new, side by side
# in one run: batch calls of N distinct keys (24 and 64 per call, drawn from
# 10 000 clients) and of one hot key (24 checks per call), per algorithm.
#
# Spawns a throwaway redis-server on 127.0.0.1 (a free port from 6500 up, no
# persistence), loads both batch scripts with SCRIPT LOAD, runs
# redis-benchmark with EVALSHA of each against it (-c 4 -P 4) and reads
# `usec_per_call` of `cmdstat_evalsha` from INFO commandstats after a CONFIG
# RESETSTAT, and the main thread's CPU time from INFO cpu: each divided by
# the checks per call. The old script is scripts/batch-cost-old.lua (what
# `batch_lua()` made before the lean rewrite, with its own argument layout);
# the new one is the working tree's, written by the unit test
# `write_batch_lua` (so this builds the crate's unit tests).
#
# Every check admits (limits far above the traffic: the write path); the
# sliding log at limit 10 000 over 60 s, its sets growing with the run.
# The keys are drawn at random (redis-benchmark's __rand_int__, -r 10000), so
# two checks of one call may share a key now and then: both scripts then read
# it twice (the crate would send it once to the new one).
#
# With CALLGRIND=1, counts instructions instead (noise-free on a shared
# machine): each case runs on its own redis-server under valgrind's
# callgrind, collecting inside `evalShaCommand` only (the script's share: not
# the reading of the command, nor the reply's write), after a warm-up of as
# many calls on 1 000 clients (so the keys exist, as in steady traffic).
#
# Usage: scripts/batch-cost.sh [calls per case, default 2000] [rounds, default 5]
#        CALLGRIND=1 [ALGS="counter gcra log"] scripts/batch-cost.sh [calls per case]
# Needs redis-server, redis-cli and redis-benchmark (apt-get install
# redis-server redis-tools), cargo, and for CALLGRIND valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${1:-2000}
ROUNDS=${2:-5}
for bin in redis-server redis-cli redis-benchmark cargo; do
  command -v "$bin" >/dev/null || { echo "$bin not found" >&2; exit 1; }
done

DIR=$(mktemp -d)
BATCH_LUA_OUT=$DIR/new.lua timeout 1800 cargo test --all-features --lib --quiet \
  write_batch_lua >/dev/null
PORT=6500
while redis-cli -p "$PORT" ping >/dev/null 2>&1; do PORT=$((PORT + 1)); done
NICE=()
nice -n -10 true 2>/dev/null && NICE=(nice -n -10)
"${NICE[@]}" redis-server --bind 127.0.0.1 --port "$PORT" --save "" --appendonly no \
  --dir "$DIR" --daemonize yes --logfile "$DIR/redis.log" --pidfile "$DIR/redis.pid"
trap 'redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
CLI=(redis-cli -p "$PORT")
OLD_SHA=$("${CLI[@]}" -x script load <scripts/batch-cost-old.lua)
NEW_SHA=$("${CLI[@]}" -x script load <"$DIR/new.lua")

# Algorithm indexes (Algorithm::ALL order), key tags, limits, windows (µs).
declare -A ALG=([log]=1 [counter]=2 [gcra]=3) TAG=([log]=w [counter]=c [gcra]=g)
declare -A LIMIT=([log]=10000 [counter]=1000000000 [gcra]=1000000000)
WINDOW=60000000

# The EVALSHA arguments (after the SHA) of a batch of `n` checks of `alg`,
# in the old or new layout; `hot`: every check of one key.
#
# Old: ARGV = runs, then per run: alg, n, key count, argument count, cost,
# nonce, limit, window; KEYS = every run's keys.
# New: ARGV = runs, then per run: code (alg + 4 * (fresh + 2
# * (implicit + 2 * n))), the nonce (log), [quota count, cost, limit,
# window] if fresh, the key index unless implicit; KEYS = distinct keys.
command_of() {
  local layout=$1 alg=$2 n=$3 hot=$4
  local a=${ALG[$alg]} limit=${LIMIT[$alg]} nonce=() keys=() argv=()
  local key="rl:{$alg:__rand_int__}:${TAG[$alg]}60000"
  [ "$hot" = hot ] && key="rl:{$alg:hot}:${TAG[$alg]}60000"
  [ "$alg" = log ] && nonce=(__rand_int__)
  local runs=$n
  # Identical checks of the counter and GCRA on a hot key are one run.
  [ "$hot" = hot ] && [ "$alg" != log ] && runs=1
  local per=$((n / runs))
  if [ "$layout" = old ]; then
    argv=("$runs")
    for ((i = 0; i < runs; i++)); do
      argv+=("$a" "$per" 1 4 1 "${nonce[0]:-}" "$limit" "$WINDOW")
      keys+=("$key")
    done
  else
    argv=("$runs")
    for ((i = 0; i < runs; i++)); do
      if [ "$i" = 0 ]; then
        argv+=($((a + 4 * (1 + 2 * (1 + 2 * per)))) "${nonce[@]}" 1 1 "$limit" "$WINDOW")
        keys+=("$key")
      elif [ "$hot" = hot ]; then
        argv+=($((a + 4 * (2 * (2 * per)))) "${nonce[@]}" 1)
      else
        argv+=($((a + 4 * (2 * (1 + 2 * per)))) "${nonce[@]}")
        keys+=("$key")
      fi
    done
  fi
  printf '%s\0' "${#keys[@]}" "${keys[@]}" "${argv[@]}"
}

cpu_us() {
  "${CLI[@]}" info cpu | tr -d '\r' | awk -F: '
    /^used_cpu_(sys|user)_main_thread:/ { total += $2 }
    END { printf "%d", total * 1000000 }'
}

cases=()
if [ "${CALLGRIND:-}" = 1 ]; then
  # One server per case; instructions per decision.
  callgrind_case() {
    local layout=$1 alg=$2 n=$3 kind=$4 sha port=$((PORT + 1)) out=$DIR/cg.out
    while redis-cli -p "$port" ping >/dev/null 2>&1; do port=$((port + 1)); done
    rm -f "$out"
    valgrind --tool=callgrind --callgrind-out-file="$out" --toggle-collect=evalShaCommand \
      redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
      --dir "$DIR" >/dev/null 2>&1 &
    local vg=$!
    for _ in $(seq 300); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    local lua=scripts/batch-cost-old.lua
    [ "$layout" = new ] && lua=$DIR/new.lua
    sha=$(redis-cli -p "$port" -x script load <"$lua")
    mapfile -d '' args < <(command_of "$layout" "$alg" "$n" "$kind")
    redis-benchmark -h 127.0.0.1 -p "$port" -n "$CALLS" -c 1 -P 1 -r 1000 -q \
      evalsha "$sha" "${args[@]}" >/dev/null
    callgrind_control -z "$vg" >/dev/null 2>&1
    redis-benchmark -h 127.0.0.1 -p "$port" -n "$CALLS" -c 1 -P 1 -r 1000 -q \
      evalsha "$sha" "${args[@]}" >/dev/null
    callgrind_control -d "$vg" >/dev/null 2>&1
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    wait "$vg" || true
    # The dump asked for after zeroing (the first): instructions ÷ checks.
    awk -v k="$CALLS" -v n="$n" '/^(summary|totals):/ { printf "%d", $2 / k / n; exit }' "$out.1"
    rm -f "$out"*
  }
  printf "| %-9s | %-11s | %s | %s |\n" algorithm batch "instructions, old" "instructions, new"
  printf "|%s|%s|%s|%s|\n" --- --- ---: ---:
  for alg in ${ALGS:-counter gcra log}; do
    for shape in "24 distinct" "64 distinct" "24 hot"; do
      read -r n kind <<<"$shape"
      printf "| %-9s | %-11s | %s | %s |\n" "$alg" "$shape" \
        "$(callgrind_case old "$alg" "$n" "$kind")" "$(callgrind_case new "$alg" "$n" "$kind")"
    done
  done
  exit 0
fi
for alg in counter gcra log; do
  for shape in "24 distinct" "64 distinct" "24 hot"; do
    cases+=("$alg|$shape")
  done
done
declare -A usecs cpus
for ((round = 1; round <= ROUNDS; round++)); do
  "${CLI[@]}" flushall >/dev/null
  for c in "${cases[@]}"; do
    IFS='|' read -r alg shape <<<"$c"
    read -r n kind <<<"$shape"
    for layout in old new; do
      sha=$OLD_SHA
      [ "$layout" = new ] && sha=$NEW_SHA
      mapfile -d '' args < <(command_of "$layout" "$alg" "$n" "$kind")
      "${CLI[@]}" config resetstat >/dev/null
      cpu0=$(cpu_us)
      timeout 300 "${NICE[@]}" redis-benchmark -h 127.0.0.1 -p "$PORT" -n "$CALLS" -c 4 -P 4 \
        -r 10000 -q evalsha "$sha" "${args[@]}" >/dev/null
      stats=$("${CLI[@]}" info commandstats | tr -d '\r' | grep '^cmdstat_evalsha:')
      usec=$(sed 's/.*usec_per_call=\([0-9.]*\).*/\1/' <<<"$stats")
      failed=$(sed 's/.*failed_calls=\([0-9]*\).*/\1/' <<<"$stats")
      [ "$failed" = 0 ] || { echo "$c $layout: $failed failed calls" >&2; exit 1; }
      cpu=$(($(cpu_us) - cpu0))
      key="$c|$layout"
      usecs[$key]="${usecs[$key]:-} $(awk -v u="$usec" -v n="$n" 'BEGIN { printf "%.2f", u / n }')"
      cpus[$key]="${cpus[$key]:-} $(awk -v c="$cpu" -v k="$CALLS" -v n="$n" 'BEGIN { printf "%.2f", c / k / n }')"
    done
  done
done

median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo "µs per decision, median of $ROUNDS rounds ($CALLS calls per case and round):"
echo "EVALSHA usec_per_call ÷ checks per call, and Redis main-thread CPU ÷ checks."
echo
printf "| %-9s | %-11s | %s | %s | %s | %s |\n" algorithm batch "usec, old" "usec, new" "CPU, old" "CPU, new"
printf "|%s|%s|%s|%s|%s|%s|\n" --- --- ---: ---: ---: ---:
for c in "${cases[@]}"; do
  IFS='|' read -r alg shape <<<"$c"
  printf "| %-9s | %-11s | %s | %s | %s | %s |\n" "$alg" "$shape" \
    "$(median "${usecs[$c|old]}")" "$(median "${usecs[$c|new]}")" \
    "$(median "${cpus[$c|old]}")" "$(median "${cpus[$c|new]}")"
done
echo
for c in "${cases[@]}"; do
  for layout in old new; do
    echo "$c $layout: usec${usecs[$c|$layout]}; CPU${cpus[$c|$layout]}"
  done
done
