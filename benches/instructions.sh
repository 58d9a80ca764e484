#!/usr/bin/env bash
# Instructions per request, under valgrind's callgrind: deterministic where CPU time on a shared
# machine is not (this VM has no hardware counters for `perf stat`). One proxy thread each, an
# nginx upstream, wrk with a user id and QoE header per request; per target and round: a warm-up,
# counters zeroed, a loaded run, a dump; instructions of all the process's threads divided by the
# requests served, and the log-sink thread's share (the file log's encoding and writes).
#   pingora-bare  examples/bare_proxy.rs, the floor
#   hydrus-empty  a route without filters
#   hydrus        rollout 50% + hydrus filter + file log
# Caveat: `rep movsb` copies count one instruction per byte, so large memcpys weigh more here than
# in CPU time.
#
# Usage: benches/instructions.sh [SECONDS per run, default 8] [ROUNDS, default 2]
# Env: HYDRUS_BIN / BARE_BIN (binaries to measure instead of the ones built here),
#      COMPARE="NAME=BINARY ..." (more hydrus binaries on the full chain, for a before/after;
#      NAME=BINARY+SNIPPET adds a file's YAML lines to that target's config),
#      KEEP_CG=DIR (keep callgrind's files there, for callgrind_annotate),
#      TRACING=1 (hydrus-trace1 and hydrus-trace100: the full chain with `tracing:` sampling 1% and
#      every request, exporting over OTLP/HTTP to the upstream nginx).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
rounds=${2:-2}
. benches/lib.sh
need_debian nginx wrk valgrind cmake
if [ -z "${HYDRUS_BIN:-}" ] || [ -z "${BARE_BIN:-}" ]; then
  cargo build --release --quiet --bin hydrus --example bare_proxy
fi
HYDRUS_BIN=${HYDRUS_BIN:-./target/release/hydrus}
BARE_BIN=${BARE_BIN:-./target/release/examples/bare_proxy}

bench_workdir 1
UP=18480
mkdir -p "$work/cg" "$work/up"
cat > "$work/up/nginx.conf" <<CONF
worker_processes 1;
pid $work/up/nginx.pid;
error_log $work/up/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP;
    location / { default_type application/json; return 200 '{"items":[3,1,4,1,5,9,2,6],"model":"small"}'; }
  }
}
CONF
nginx -c "$work/up/nginx.conf" -p "$work/up" -g 'daemon off;' & pids+=($!)

# config NAME PORT FULL?: a hydrus config in $work/NAME.yaml (its log under $work/logs-NAME).
config() {
  cat > "$work/$1.yaml" <<CONF
listen: 127.0.0.1:$2
admin: { listen: "127.0.0.1:$(($2 + 50))" }
threads: 1
shutdown: { grace_period: 0s, timeout: 1s, upgrade_sock: $work/$1.sock, pid_file: $work/$1.pid }
clusters:
  ranking-small: { endpoints: ["127.0.0.1:$UP"] }
  ranking-large: { endpoints: ["127.0.0.1:$UP"] }
route: { cluster: ranking-small }
CONF
  if [ "$3" = full ]; then
    full_chain_filters "$work/logs-$1" >> "$work/$1.yaml"
  else
    echo "filters: []" >> "$work/$1.yaml"
  fi
}
grind() { # NAME COMMAND...: run under callgrind, counting from the start, a file per thread
  local name=$1; shift
  valgrind --tool=callgrind --dump-instr=no --separate-threads=yes \
    --callgrind-out-file="$work/cg/$name.%p" "$@" > "$work/$name.vg" 2>&1 &
  pids+=($!); pid[$name]=$!
}
declare -A pid port
names=(pingora-bare hydrus-empty hydrus)
port[pingora-bare]=18481; port[hydrus-empty]=18482; port[hydrus]=18483
grind pingora-bare "$BARE_BIN" "127.0.0.1:${port[pingora-bare]}" "127.0.0.1:$UP" 1
config hydrus-empty "${port[hydrus-empty]}" empty
grind hydrus-empty "$HYDRUS_BIN" serve --config "$work/hydrus-empty.yaml"
config hydrus "${port[hydrus]}" full
grind hydrus "$HYDRUS_BIN" serve --config "$work/hydrus.yaml"
p=18484
compare=${COMPARE:-}
if [ "${TRACING:-0}" = 1 ]; then
  for t in "trace1 0.01" "trace100 1.0"; do
    set -- $t
    printf 'tracing:\n  sample_ratio: %s\n  otlp: { endpoint: "http://127.0.0.1:%s", protocol: http }\n' "$2" "$UP" > "$work/$1.snippet"
    compare+=" $1=$HYDRUS_BIN+$work/$1.snippet"
  done
fi
for spec in $compare; do
  name=hydrus-${spec%%=*}; bin=${spec#*=}; snippet=""
  case $bin in *+*) snippet=${bin#*+}; bin=${bin%%+*} ;; esac
  config "$name" "$p" full
  [ -z "$snippet" ] || cat "$snippet" >> "$work/$name.yaml"
  grind "$name" "$bin" serve --config "$work/$name.yaml"
  names+=("$name"); port[$name]=$p; p=$((p + 1))
done

req_lua "$work/req.lua"
for n in "${names[@]}"; do
  for _ in $(seq 300); do curl -s -o /dev/null "127.0.0.1:${port[$n]}/" && break; sleep 0.2; done
done

declare -A total sink
for r in $(seq "$rounds"); do
  for n in "${names[@]}"; do
    url="http://127.0.0.1:${port[$n]}/rank"
    wrk -t1 -c32 -d2s -s "$work/req.lua" "$url" > /dev/null 2>&1
    callgrind_control -z "${pid[$n]}" > /dev/null 2>&1
    out=$(wrk -t1 -c32 -d"${secs}s" -s "$work/req.lua" "$url")
    callgrind_control -d "$n-r$r" "${pid[$n]}" > /dev/null 2>&1
    sleep 2
    req=$(awk '/requests in/ {print $1}' <<< "$out")
    # The newest dump's per-thread files: sum them; the log-sink thread's on its own.
    last=$(ls "$work/cg" | grep "^$n\.${pid[$n]}\.[0-9]*-" | sed -E 's/.*\.([0-9]+)-[0-9]+$/\1/' | sort -n | tail -1)
    ir=0; ir_sink=0
    for f in "$work/cg/$n.${pid[$n]}.$last"-*; do
      x=$(awk '/^summary:|^totals:/ {print $2; exit}' "$f")
      ir=$((ir + x))
      if grep -q "Sink>::accept" "$f"; then ir_sink=$((ir_sink + x)); fi
    done
    total[$n]="${total[$n]:-} $((ir / req))"; sink[$n]="${sink[$n]:-} $((ir_sink / req))"
    echo "round $r $n: $req requests, $((ir / req)) instructions/request ($((ir_sink / req)) on the log-sink thread)" >&2
  done
done
if [ -n "${KEEP_CG:-}" ]; then mkdir -p "$KEEP_CG" && cp "$work"/cg/* "$KEEP_CG"/; fi
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }
echo
echo "| target | instructions / request | on the log-sink thread | over pingora-bare |"
echo "|---|---|---|---|"
bare=$(median <<< "${total[pingora-bare]}")
for n in "${names[@]}"; do
  t=$(median <<< "${total[$n]}"); s=$(median <<< "${sink[$n]}")
  echo "| $n | $t | $s | $((t - bare)) |"
done
echo
echo "callgrind, one proxy thread, wrk -t1 -c32 -d${secs}s, $rounds interleaved rounds (medians), $(date -u +%F). Command: \`${TRACING:+TRACING=$TRACING }${COMPARE:+COMPARE=\"$COMPARE\" }bash benches/instructions.sh $secs $rounds\`."
