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
# Usage: scripts/script-cost.sh [requests per case, default 50000] [rounds, default 5]
# Needs redis-server, redis-cli and redis-benchmark (apt-get install redis-server
# redis-tools). Bounded: a few seconds per case.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50000}
ROUNDS=${2:-5}
OLD=${OLD:-85d9c3f}
for bin in redis-server redis-cli redis-benchmark; do
  command -v "$bin" >/dev/null || { echo "$bin not found: apt-get install redis-server redis-tools" >&2; exit 1; }
done

PORT=6400
while redis-cli -p "$PORT" ping >/dev/null 2>&1; do PORT=$((PORT + 1)); done
DIR=$(mktemp -d)
# Ahead of whatever else runs on the machine, where allowed (root): figures
# for the scripts, not for the scheduler.
NICE=()
nice -n -10 true 2>/dev/null && NICE=(nice -n -10)
"${NICE[@]}" redis-server --bind 127.0.0.1 --port "$PORT" --save "" --appendonly no \
  --dir "$DIR" --daemonize yes --logfile "$DIR/redis.log" --pidfile "$DIR/redis.pid"
trap 'redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
CLI=(redis-cli -p "$PORT")

# A script's source: "old:<file>" (at $OLD), "new:<file>" (working tree) or
# "baseline" (TIME and a 5-element reply, nothing else).
# A file that defines `state` without its single check is followed by
# state_main.lua of the same revision, and one that calls `window_units`
# without defining it comes after sliding_log_read.lua, as the crate sends
# them.
with_main() {
  local text
  text=$("$@" "$file")
  if grep -q 'window_units(' <<<"$text" && ! grep -q '^local function window_units(' <<<"$text"; then
    "$@" "$read"
  fi
  printf '%s\n' "$text"
  if grep -q '^local function state(' <<<"$text" && ! grep -q '^-- main$' <<<"$text"; then
    "$@" "$main"
  fi
}
show_old() { git show "$OLD:$1"; }
source_of() {
  case "$1" in
    old:*) file=src/algorithm/${1#old:} main=src/algorithm/state_main.lua read=src/algorithm/sliding_log_read.lua with_main show_old ;;
    new:*) file=src/algorithm/${1#new:} main=src/algorithm/state_main.lua read=src/algorithm/sliding_log_read.lua with_main cat ;;
    baseline) echo "local t = redis.call('TIME') return {1, 0, 0, 1, 1}" ;;
  esac
}
load() { source_of "$1" | "${CLI[@]}" -x script load; }

# name | script source | key pattern | limit | window (us) | clients (-r)
# Limits far above the traffic: every call admits (the write path). The log
# at limit 100: 200 clients, N/4 calls, so its sets grow to about 60 entries
# (never 100: every call still admits), old and new on their own keys. The
# baseline is a script doing nothing but TIME and a 5-element reply.
cases=(
  "baseline: TIME + reply|baseline|k|1|1|1|$N"
  "counter, old (hash)|old:sliding_window.lua|rl:{api:__rand_int__}:w60000|1000000000|60000000|100|$N"
  "counter, new (string)|new:sliding_window.lua|rl:{api:__rand_int__}:c60000|1000000000|60000000|100|$N"
  "gcra|new:gcra.lua|rl:{api:__rand_int__}:g60000|1000000000|60000000|100|$N"
  "log limit 100, old|old:sliding_log.lua|rl:{auth:__rand_int__}:l60000|100|60000000|100|$((N / 4))"
  "log limit 100, new|new:sliding_log.lua|rl:{auth2:__rand_int__}:l60000|100|60000000|100|$((N / 4))"
  "counter peek, old|old:sliding_window_peek.lua|rl:{api:__rand_int__}:w60000|1000000000|60000000|100|$N"
  "counter peek, new|new:sliding_window_peek.lua|rl:{api:__rand_int__}:c60000|1000000000|60000000|100|$N"
  "gcra peek|new:gcra_peek.lua|rl:{api:__rand_int__}:g60000|1000000000|60000000|100|$N"
)

# Redis main-thread CPU time so far, in µs (INFO cpu, Redis 6.2+): it
# counts the command's parsing and reply too, but not time spent preempted.
cpu_us() {
  "${CLI[@]}" info cpu | tr -d '\r' | awk -F: '
    /^used_cpu_(sys|user)_main_thread:/ { total += $2 }
    END { printf "%d", total * 1000000 }'
}

declare -A seen cpus
for ((round = 1; round <= ROUNDS; round++)); do
  "${CLI[@]}" flushall >/dev/null
  for c in "${cases[@]}"; do
    IFS='|' read -r name src key limit window clients n <<<"$c"
    sha=$(load "$src")
    "${CLI[@]}" config resetstat >/dev/null
    cpu0=$(cpu_us)
    timeout 120 "${NICE[@]}" redis-benchmark -h 127.0.0.1 -p "$PORT" -n "$n" -c 8 -P 16 -r "$clients" -q \
      evalsha "$sha" 1 "$key" 1 "__rand_int__" "$limit" "$window" >/dev/null
    stats=$("${CLI[@]}" info commandstats | tr -d '\r' | grep '^cmdstat_evalsha:')
    usec=$(echo "$stats" | sed 's/.*usec_per_call=\([0-9.]*\).*/\1/')
    failed=$(echo "$stats" | sed 's/.*failed_calls=\([0-9]*\).*/\1/')
    [ "$failed" = 0 ] || { echo "$name: $failed failed calls" >&2; exit 1; }
    cpu=$(( ($(cpu_us) - cpu0) * 100 / n ))
    seen[$name]="${seen[$name]:-} $usec"
    cpus[$name]="${cpus[$name]:-} $((cpu / 100)).$(printf %02d $((cpu % 100)))"
  done
done

# Per script: the median and the smallest usec_per_call over the rounds (the
# smallest is the least disturbed by whatever else runs on the machine), and
# the median Redis main-thread CPU per call (script, parsing and reply).
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
smallest() { tr ' ' '\n' <<<"$1" | grep . | sort -g | head -1; }
printf "| %-24s | %s | %s | %s |\n" "script" "usec_per_call, median" "min" "CPU per call, median"
printf "|%s|%s|%s|%s|\n" "---" "---:" "---:" "---:"
for c in "${cases[@]}"; do
  name=${c%%|*}
  printf "| %-24s | %s | %s | %s |\n" "$name" "$(median "${seen[$name]}")" \
    "$(smallest "${seen[$name]}")" "$(median "${cpus[$name]}")"
done
echo
for c in "${cases[@]}"; do
  name=${c%%|*}
  echo "$name: usec_per_call${seen[$name]}; CPU${cpus[$name]}"
done
