#!/usr/bin/env bash
# gRPC over HTTP/2 in clear text, on loopback, in one run and interleaved:
#   direct        h2load -> the gRPC server (examples/grpc_upstream.rs: tonic, health service)
#   hydrus        h2load -> hydrus, full chain (rollout 50% + hydrus filter + file log) -> server
#   hydrus-empty  h2load -> hydrus, a route without filters -> server
#   nginx         h2load -> nginx grpc_pass (keepalive upstream) -> server
#   haproxy       h2load -> HAProxy (h2 in clear text on both sides) -> server
#   pingora-bare  h2load -> examples/bare_proxy.rs (h2c on both sides, no filters) -> server
# Every call is grpc.health.v1.Health/Check (unary) with a user id and QoE metadata. Per target
# and round: calls/s and the proxy's CPU time per call (utime+stime of its processes from /proc
# over the run, divided by the calls completed); medians of the rounds; ratios to nginx.
#
#   benches/grpc.sh [SECONDS per run, default 10] [ROUNDS, default 3] [CLIENTS, default 16]
#   benches/grpc.sh soak [SECONDS, default 60]
#
# `soak`: calls through hydrus at about 1,000/s to a cluster of two servers for SECONDS while one
# of them is restarted twice (SIGTERM: it finishes its calls and says GOAWAY; back 2 s later);
# counts the calls that did not succeed, by the log records' grpc_status and h2load's failures.
# Env: HYDRUS_BENCH_THREADS (proxy threads / nginx workers, default 2), STREAMS (concurrent
# streams per client, default 8), COMPARE="NAME=BINARY ..." (more hydrus binaries on the full
# chain in the same rounds, as hydrus-NAME: a change measured before and after in one run;
# NAME=BINARY+SNIPPET adds a file's YAML lines to that target's config).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=bench
if [ "${1:-}" = soak ]; then mode=soak; shift; fi
secs=${1:-$([ $mode = soak ] && echo 60 || echo 10)}
rounds=${2:-3}
clients=${3:-16}
threads=${HYDRUS_BENCH_THREADS:-2}
streams=${STREAMS:-8}

. benches/lib.sh
need_debian nginx haproxy nghttp2-client cmake
cargo build --release --quiet --bin hydrus --example grpc_upstream --example bare_proxy
HYDRUS_BIN=${HYDRUS_BIN:-./target/release/hydrus}
SERVER_BIN=./target/release/examples/grpc_upstream
BARE_BIN=${BARE_BIN:-./target/release/examples/bare_proxy}

bench_workdir

UP=18280; UP2=18286; FULL=18281; EMPTY=18282; NGX=18283; HAP=18284; BARE=18285; ADMF=18291; ADME=18292
CHECK=/grpc.health.v1.Health/Check
HZ=$(getconf CLK_TCK)
# A HealthCheckRequest for the whole server: an empty message in a gRPC frame.
printf '\x00\x00\x00\x00\x00' > "$work/req.bin"
# A k-table: k = 0.004 for every 15-minute window.
{ echo "window_secs: 900"; echo "scenarios:"; echo -n "  default: ["; for i in $(seq 95); do echo -n "0.004, "; done; echo "0.004]"; } > "$work/ktable.yaml"

"$SERVER_BIN" "127.0.0.1:$UP" & pids+=($!)

hydrus_config() { # port admin chain-filters endpoints
  cat <<CONF
listen: 127.0.0.1:$1
threads: $threads
admin: { listen: 127.0.0.1:$2 }
shutdown: { grace_period: 1s, upgrade_sock: $work/upgrade-$1.sock, pid_file: $work/hydrus-$1.pid }
clusters:
  grpc:
    endpoints: [$4]
    protocol: h2c
    health_check: { grpc_service: "", interval: 1s, healthy_threshold: 1, unhealthy_threshold: 1 }
routes:
  - name: check
    match: { path: $CHECK }
    cluster: grpc
$3
CONF
}
filters() { # LOG_DIR: the full chain's filters
  echo "    filters:
      - rollout: { percent: 50 }
      - hydrus:
          default_strategy: s20
          ktable: { path: $work/ktable.yaml }
          strategies:
            - { name: s10, cost: 6, qoe_scale: 0.9, set_query: { candidates: \"10\" } }
            - { name: s20, cost: 10, set_query: { candidates: \"20\" } }
            - { name: s40, cost: 18, qoe_scale: 1.08, set_query: { candidates: \"40\" } }
      - log: { file: { dir: $1, flush_interval: 200ms } }"
}
FILTERS=$(filters "$work/logs")

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; return 1; }

# One h2load run (its report: calls/s, calls done, failed).
load() { # port seconds clients [extra h2load args]
  local port=$1 d=$2 c=$3; shift 3
  h2load -D "$d" -c "$c" -m "$streams" -t 1 -d "$work/req.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    -H 'x-user-id: u1' -H 'x-qoe-score: 0.6' "$@" \
    "http://127.0.0.1:$port$CHECK" 2>&1
}

if [ $mode = soak ]; then
  "$SERVER_BIN" "127.0.0.1:$UP2" & up2=$!; pids+=($up2)
  hydrus_config $FULL $ADMF "$FILTERS" "\"127.0.0.1:$UP\", \"127.0.0.1:$UP2\"" > "$work/soak.yaml"
  "$HYDRUS_BIN" serve --config "$work/soak.yaml" 2>"$work/soak.log" & pids+=($!)
  wait_port $UP2; wait_port $FULL
  load $FULL "$secs" 4 --rps=250 > "$work/h2load.out" & loader=$!
  for at in 0.25 0.58; do
    sleep "$(awk -v s="$secs" -v a=$at 'BEGIN { print s * a }')"
    kill -TERM $up2; wait $up2 2>/dev/null || true
    sleep 2
    "$SERVER_BIN" "127.0.0.1:$UP2" & up2=$!; pids+=($up2)
    echo "restarted the server on :$UP2"
  done
  wait $loader || true
  sleep 1.5 # the log's flush
  cp "$work/soak.log" /tmp/grpc-soak-hydrus.log 2>/dev/null || true
  grep -E "^requests:|^status codes:" "$work/h2load.out"
  calls=$(cat "$work"/logs/*.jsonl | wc -l)
  ok=$(cat "$work"/logs/*.jsonl | grep -c '"grpc_status":0' || true)
  failed=$(awk '/^requests:/ { print $10 }' "$work/h2load.out")
  grep -h -v '"grpc_status":0' "$work"/logs/*.jsonl | head -5 || true
  grep -E "ERROR|WARN" "$work/soak.log" | grep -v ConnectRefused | head -10 || true
  echo "soak: $secs s, about 1000 calls/s, the server on :$UP2 restarted twice; calls logged: $calls, grpc_status 0: $ok, not OK: $((calls - ok)); h2load failed: $failed ($(date -u +%F), command: bash benches/grpc.sh soak $secs)"
  exit 0
fi

hydrus_config $FULL $ADMF "$FILTERS" "\"127.0.0.1:$UP\"" > "$work/full.yaml"
hydrus_config $EMPTY $ADME "" "\"127.0.0.1:$UP\"" > "$work/empty.yaml"
"$HYDRUS_BIN" serve --config "$work/full.yaml" 2>"$work/full.log" & pids+=($!)
"$HYDRUS_BIN" serve --config "$work/empty.yaml" 2>"$work/empty.log" & pids+=($!)
declare -A port=([direct]=$UP [hydrus]=$FULL [hydrus-empty]=$EMPTY [nginx]=$NGX [haproxy]=$HAP [pingora-bare]=$BARE)
targets=(direct hydrus hydrus-empty pingora-bare nginx haproxy)
i=0
for spec in ${COMPARE:-}; do
  # NAME=BINARY, or NAME=BINARY+SNIPPET (YAML lines added to the full chain's config)
  name=hydrus-${spec%%=*}; bin=${spec#*=}; snippet=""
  case $bin in *+*) snippet=${bin#*+}; bin=${bin%%+*} ;; esac
  hydrus_config $((18300 + i)) $((18310 + i)) "$(filters "$work/logs-$name")" "\"127.0.0.1:$UP\"" > "$work/$name.yaml"
  [ -z "$snippet" ] || cat "$snippet" >> "$work/$name.yaml"
  "$bin" serve --config "$work/$name.yaml" 2>"$work/$name.log" & pids+=($!)
  port[$name]=$((18300 + i)); targets+=("$name"); i=$((i + 1))
done
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes $threads;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  upstream grpcup { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 100000000; }
  server {
    listen 127.0.0.1:$NGX http2;
    location / { grpc_pass grpc://grpcup; }
  }
}
CONF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -g 'daemon off;' & pids+=($!)
cat > "$work/haproxy.cfg" <<CONF
global
  nbthread $threads
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend grpc_in
  bind 127.0.0.1:$HAP proto h2
  default_backend grpc_up
backend grpc_up
  server s1 127.0.0.1:$UP proto h2
CONF
haproxy -f "$work/haproxy.cfg" -db & pids+=($!)
"$BARE_BIN" "127.0.0.1:$BARE" "127.0.0.1:$UP" "$threads" h2c & pids+=($!); bare_pid=$!
for n in "${targets[@]}"; do wait_port "${port[$n]}"; done

procs() { # target -> pids
  case $1 in
    direct) echo "${pids[0]}" ;;
    hydrus) pgrep -f "serve --config $work/full.yaml" ;;
    hydrus-empty) pgrep -f "serve --config $work/empty.yaml" ;;
    nginx) pgrep -f "nginx: worker process" | tr '\n' ' '; pgrep -f "nginx: master process nginx -c $work/nginx" ;;
    haproxy) pgrep -f "haproxy -f $work/haproxy.cfg" ;;
    pingora-bare) echo "$bare_pid" ;;
    hydrus-*) pgrep -f "serve --config $work/$1.yaml" ;;
  esac
}
ticks() { local t=0; for p in $1; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat"))); done; echo $t; }

declare -A all
for r in $(seq "$rounds"); do
  for n in "${targets[@]}"; do
    p=$(procs "$n"); t0=$(ticks "$p")
    out=$(load "${port[$n]}" "$secs" "$clients")
    t1=$(ticks "$p")
    rps=$(echo "$out" | awk '/^finished in/ { print $4 }')
    done_=$(echo "$out" | awk '/^requests:/ { print $8 }')
    failed=$(echo "$out" | awk '/^requests:/ { print $10 }')
    cpu=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$done_" 'BEGIN { printf "%.2f", (n > 0 ? d * 1e6 / hz / n : 0) }')
    echo "round $r $n: $rps calls/s, $cpu us CPU/call, $failed failed" >&2
    all[$n]="${all[$n]:-}$rps $cpu $failed;"
  done
done

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
col() { echo "$1" | tr ';' '\n' | grep . | awk -v c="$2" '{print $c}' | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a/b }'; }
echo "| target | calls/s | CPU us / call | failed calls (all rounds) |"
echo "|---|---|---|---|"
declare -A rps cpu
for n in "${targets[@]}"; do
  rps[$n]=$(col "${all[$n]}" 1); cpu[$n]=$(col "${all[$n]}" 2)
  f=$(echo "${all[$n]}" | tr ';' '\n' | grep . | awk '{s += $3} END {print s}')
  if [ "$n" = direct ]; then c="-"; else c=${cpu[$n]}; fi
  echo "| $n | ${rps[$n]} | $c | $f |"
done
echo
echo "Calls/s: hydrus (full chain) / nginx grpc_pass **$(ratio "${rps[hydrus]}" "${rps[nginx]}")**; hydrus (empty chain) / nginx $(ratio "${rps[hydrus-empty]}" "${rps[nginx]}"); hydrus / HAProxy $(ratio "${rps[hydrus]}" "${rps[haproxy]}"). CPU per call: hydrus / nginx **$(ratio "${cpu[hydrus]}" "${cpu[nginx]}")**, hydrus (empty) / nginx $(ratio "${cpu[hydrus-empty]}" "${cpu[nginx]}"), hydrus / HAProxy **$(ratio "${cpu[hydrus]}" "${cpu[haproxy]}")**, bare pingora / nginx $(ratio "${cpu[pingora-bare]}" "${cpu[nginx]}"), HAProxy / nginx $(ratio "${cpu[haproxy]}" "${cpu[nginx]}")."
echo
echo "2 CPUs shared by h2load, the server and the proxies; $threads proxy threads / nginx workers / HAProxy threads; h2load -c $clients -m $streams -D $secs, $rounds interleaved rounds (medians), $(date -u +%F). Command: \`${COMPARE:+COMPARE=\"$COMPARE\" }bash benches/grpc.sh $secs $rounds $clients\`."
