#!/usr/bin/env bash
# Whole-proxy load benchmark, on loopback, in one run and interleaved:
#   direct      wrk -> nginx upstream (a small JSON body)
#   hydrus      wrk -> hydrus, full chain (rollout 50% + hydrus filter + file log) -> upstream
#   hydrus-empty wrk -> hydrus, empty chain -> upstream
#   pingora-bare wrk -> a bare pingora proxy (examples/bare_proxy.rs): the floor under hydrus
#   nginx       wrk -> nginx reverse proxy (keepalive upstream) -> upstream
#   haproxy     wrk -> HAProxy -> upstream
# For every target, per round: a loaded run (wrk -c CONNECTIONS) giving requests/s, p50/p99 and
# the proxy's CPU time per request (utime+stime of its processes from /proc over the run,
# divided by the requests served), then a serial run (one connection) giving p50/p99. Medians of
# the rounds; ratios to nginx; hydrus's own decision and overhead histograms. Writes
# benches/results/load.json and benches/results/load.md.
#
# Usage: benches/load.sh [SECONDS per run, default 10] [ROUNDS, default 3] [CONNECTIONS, default 32]
# Env: HYDRUS_BENCH_THREADS (proxy threads/processes, default 2), SERIAL_SECS (default 4),
#      HYDRUS_BIN / BARE_BIN (binaries to measure instead of the ones built here),
#      COMPARE="NAME=BINARY ..." (more hydrus binaries run on the full chain in the same rounds,
#      e.g. COMPARE="before=/tmp/hydrus-old" to measure a change before and after in one run),
#      BARE_COMPARE="NAME=BINARY ..." (more bare pingora proxies, e.g. built before a pingora patch),
#      TRACING=1 (three more full-chain targets with `tracing:` on: hydrus-trace1 samples 1% and
#      hydrus-trace100 every request, exporting over OTLP/HTTP to the upstream nginx, which takes
#      POST /v1/traces as a collector would, cheaply; hydrus-trace-dead samples every request
#      for a collector that is down: a closed port).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
conns=${3:-32}
threads=${HYDRUS_BENCH_THREADS:-2}
serial_secs=${SERIAL_SECS:-4}

. benches/lib.sh
need_debian nginx haproxy wrk cmake
cargo build --release --quiet --bin hydrus --example bare_proxy
HYDRUS_BIN=${HYDRUS_BIN:-./target/release/hydrus}
BARE_BIN=${BARE_BIN:-./target/release/examples/bare_proxy}

bench_workdir

UP=18180; FULL=18181; EMPTY=18182; NGX=18183; HAP=18184; BARE=18185; ADMF=18191; ADME=18192

# The upstream: nginx answering a small JSON body.
mkdir -p "$work/nginx-up" "$work/nginx-rp"
cat > "$work/nginx-up/nginx.conf" <<CONF
worker_processes $threads;
pid $work/nginx-up/nginx.pid;
error_log $work/nginx-up/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP reuseport;
    location / { default_type application/json; return 200 '{"items":[3,1,4,1,5,9,2,6],"model":"small"}'; }
  }
}
CONF
nginx -c "$work/nginx-up/nginx.conf" -p "$work/nginx-up" -g 'daemon off;' & pids+=($!)

# nginx as a reverse proxy with a keepalive upstream pool.
cat > "$work/nginx-rp/nginx.conf" <<CONF
worker_processes $threads;
pid $work/nginx-rp/nginx.pid;
error_log $work/nginx-rp/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream ranker { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$NGX reuseport;
    location / { proxy_pass http://ranker; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
nginx -c "$work/nginx-rp/nginx.conf" -p "$work/nginx-rp" -g 'daemon off;' & pids+=($!); ngx_master=$!

cat > "$work/haproxy.cfg" <<CONF
global
  nbthread $threads
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$HAP
  default_backend be
backend be
  http-reuse always
  server up 127.0.0.1:$UP
CONF
haproxy -f "$work/haproxy.cfg" -db & pids+=($!); hap_pid=$!

common="threads: $threads
shutdown: { grace_period: 0s, timeout: 1s, upgrade_sock: $work/up.sock }
clusters:
  ranking-small: { endpoints: [\"127.0.0.1:$UP\"] }
  ranking-large: { endpoints: [\"127.0.0.1:$UP\"] }
route: { cluster: ranking-small }"
cat > "$work/full.yaml" <<CONF
listen: 127.0.0.1:$FULL
admin: { listen: "127.0.0.1:$ADMF" }
$common
CONF
full_chain_filters "$work/logs" >> "$work/full.yaml"
cat > "$work/empty.yaml" <<CONF
listen: 127.0.0.1:$EMPTY
admin: { listen: "127.0.0.1:$ADME" }
$common
filters: []
CONF
RUST_LOG=warn "$HYDRUS_BIN" serve --config "$work/full.yaml" & pids+=($!); full_pid=$!
RUST_LOG=warn "$HYDRUS_BIN" serve --config "$work/empty.yaml" & pids+=($!); empty_pid=$!
RUST_LOG=warn "$BARE_BIN" 127.0.0.1:$BARE 127.0.0.1:$UP "$threads" & pids+=($!); bare_pid=$!

# More hydrus binaries on the full chain, for before/after comparisons in one run.
extra_names=(); extra_ports=(); declare -A extra_pid
port=18200
compare=${COMPARE:-}
if [ "${TRACING:-0}" = 1 ]; then
  for t in "trace1 0.01 $UP" "trace100 1.0 $UP" "trace-dead 1.0 $((UP + 99))"; do
    set -- $t
    printf 'tracing:\n  sample_ratio: %s\n  otlp: { endpoint: "http://127.0.0.1:%s", protocol: http }\n' "$2" "$3" > "$work/$1.yaml"
    compare+=" $1=$HYDRUS_BIN+$work/$1.yaml"
  done
fi
for spec in $compare; do
  # NAME=BINARY, or NAME=BINARY+SNIPPET (YAML lines added to the full chain's config)
  name=hydrus-${spec%%=*}; bin=${spec#*=}; snippet=""
  case $bin in *+*) snippet=${bin#*+}; bin=${bin%%+*} ;; esac
  sed -e "s/127.0.0.1:$FULL/127.0.0.1:$port/" -e "s/127.0.0.1:$ADMF/127.0.0.1:$((port + 1))/" \
    -e "s#$work/logs#$work/logs-$name#" "$work/full.yaml" > "$work/$name.yaml"
  [ -z "$snippet" ] || cat "$snippet" >> "$work/$name.yaml"
  RUST_LOG=warn "$bin" serve --config "$work/$name.yaml" & pids+=($!); extra_pid[$name]=$!
  extra_names+=("$name"); extra_ports+=("$port"); port=$((port + 2))
done

# More bare pingora binaries (e.g. built before a patch to pingora), in the same rounds.
for spec in ${BARE_COMPARE:-}; do
  name=pingora-bare-${spec%%=*}; bin=${spec#*=}
  RUST_LOG=warn "$bin" 127.0.0.1:$port 127.0.0.1:$UP "$threads" & pids+=($!); extra_pid[$name]=$!
  extra_names+=("$name"); extra_ports+=("$port"); port=$((port + 2))
done

# Requests carry a user id (varying) and a QoE score, as a front end would send them.
req_lua "$work/req.lua"

for port in $UP $FULL $EMPTY $BARE $NGX $HAP ${extra_ports[@]+"${extra_ports[@]}"}; do
  for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$port/" && break; sleep 0.1; done
done

# The processes of each target, for their CPU time.
procs() {
  case $1 in
    direct) local m; m=$(cat "$work/nginx-up/nginx.pid"); echo "$m $(pgrep -P "$m" | tr '\n' ' ')" ;;
    hydrus) echo "$full_pid" ;;
    hydrus-empty) echo "$empty_pid" ;;
    pingora-bare) echo "$bare_pid" ;;
    nginx) echo "$ngx_master $(pgrep -P "$ngx_master" | tr '\n' ' ')" ;;
    haproxy) echo "$hap_pid" ;;
    *) echo "${extra_pid[$1]}" ;;
  esac
}
# utime+stime of the given pids, in clock ticks (all threads of each process).
ticks() {
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat")))
  done
  echo $t
}
HZ=$(getconf CLK_TCK)

# Returns "rps p50_ms p99_ms cpu_us_per_request" for one loaded wrk run on target $1 / port $2.
run() {
  local out p t0 t1 rps req p50 p99 errs cpu
  p=$(procs "$1")
  t0=$(ticks $p)
  out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$work/req.lua" "http://127.0.0.1:$2/rank" 2>&1)
  t1=$(ticks $p)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  req=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
  [ -z "$errs" ] || echo "warning: $1: $errs" >&2
  cpu=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$req" 'BEGIN { printf "%.2f", d * 1e6 / hz / n }')
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $cpu"
}
# Returns "p50_ms p99_ms" for one serial (one connection) run.
serial() {
  local out
  out=$(wrk -t1 -c1 -d"${serial_secs}s" --latency -s "$work/req.lua" "http://127.0.0.1:$1/rank" 2>&1)
  echo "$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")") $(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")"
}
to_ms() { # wrk prints 812.00us / 1.23ms / 1.02s
  awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'
}

names=(direct hydrus hydrus-empty pingora-bare nginx haproxy ${extra_names[@]+"${extra_names[@]}"})
ports=($UP $FULL $EMPTY $BARE $NGX $HAP ${extra_ports[@]+"${extra_ports[@]}"})
declare -A res ser
for r in $(seq "$rounds"); do
  for i in "${!names[@]}"; do
    res[${names[$i]},$r]=$(run "${names[$i]}" "${ports[$i]}")
    ser[${names[$i]},$r]=$(serial "${ports[$i]}")
    echo "round $r ${names[$i]}: ${res[${names[$i]},$r]} serial ${ser[${names[$i]},$r]}" >&2
  done
done

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
col() { for r in $(seq "$rounds"); do echo "$1" | tr ';' '\n' | sed -n "${r}p" | awk -v c="$2" '{print $c}'; done | median; }
declare -A rps p50 p99 cpu s50 s99
for n in "${names[@]}"; do
  all=""; sall=""
  for r in $(seq "$rounds"); do all+="${res[$n,$r]};"; sall+="${ser[$n,$r]};"; done
  rps[$n]=$(col "$all" 1); p50[$n]=$(col "$all" 2); p99[$n]=$(col "$all" 3); cpu[$n]=$(col "$all" 4)
  s50[$n]=$(col "$sall" 1); s99[$n]=$(col "$sall" 2)
done

# hydrus's own histograms (upper bound of the bucket holding the quantile).
quantile() { # metric-name quantile
  awk -v name="$1" -v q="$2" '
    $0 ~ "^"name"_bucket" { match($0, /le="[^"]+"/); le=substr($0, RSTART+4, RLENGTH-5); b[le]+=$2; if (!(le in seen)) { seen[le]=1; order[++n]=le } }
    $0 ~ "^"name"_count" { total+=$2 }
    END { for (i=1;i<=n;i++) if (b[order[i]] >= q*total) { print order[i]; exit } }' <<<"$metrics"
}
metrics=$(curl -s "127.0.0.1:$ADMF/metrics")
decision_p99=$(quantile hydrus_decision_seconds 0.99)
overhead_p50=$(quantile hydrus_proxy_overhead_seconds 0.5)
overhead_p99=$(quantile hydrus_proxy_overhead_seconds 0.99)
records=$(awk '/^hydrus_log_records_total\{result="written"\}/ {print $2}' <<<"$metrics")
dropped=$(awk '/^hydrus_log_records_total\{result="dropped"\}/ {print $2}' <<<"$metrics")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a/b }'; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a-b }'; }
added() { minus "${s50[$1]}" "${s50[direct]}"; }
hy_ngx=$(ratio "${rps[hydrus]}" "${rps[nginx]}")
hy_empty_ngx=$(ratio "${rps[hydrus-empty]}" "${rps[nginx]}")
full_empty=$(ratio "${rps[hydrus]}" "${rps[hydrus-empty]}")
hy_hap=$(ratio "${rps[hydrus]}" "${rps[haproxy]}")
empty_bare=$(ratio "${rps[hydrus-empty]}" "${rps[pingora-bare]}")
bare_ngx=$(ratio "${rps[pingora-bare]}" "${rps[nginx]}")
cpu_hy_ngx=$(ratio "${cpu[hydrus]}" "${cpu[nginx]}")
cpu_bare_ngx=$(ratio "${cpu[pingora-bare]}" "${cpu[nginx]}")
cpu_hy_bare=$(minus "${cpu[hydrus]}" "${cpu[pingora-bare]}")
added_ratio=$(ratio "$(added hydrus)" "$(added nginx)")

mkdir -p benches/results
{
  echo "{"
  echo "  \"date\": \"$(date -u +%FT%TZ)\", \"cpus\": $(nproc), \"seconds\": $secs, \"serial_seconds\": $serial_secs, \"rounds\": $rounds, \"connections\": $conns, \"proxy_threads\": $threads,"
  echo "  \"results\": {"
  for i in "${!names[@]}"; do
    n=${names[$i]}; sep=","; [ "$i" -eq $((${#names[@]}-1)) ] && sep=""
    echo "    \"$n\": {\"rps\": ${rps[$n]}, \"p50_ms\": ${p50[$n]}, \"p99_ms\": ${p99[$n]}, \"cpu_us_per_request\": ${cpu[$n]}, \"serial_p50_ms\": ${s50[$n]}, \"serial_p99_ms\": ${s99[$n]}}$sep"
  done
  echo "  },"
  echo "  \"ratios\": {\"hydrus_over_nginx\": $hy_ngx, \"hydrus_empty_over_nginx\": $hy_empty_ngx, \"full_over_empty_chain\": $full_empty, \"hydrus_over_haproxy\": $hy_hap, \"hydrus_empty_over_pingora_bare\": $empty_bare, \"pingora_bare_over_nginx\": $bare_ngx, \"cpu_hydrus_over_nginx\": $cpu_hy_ngx, \"cpu_pingora_bare_over_nginx\": $cpu_bare_ngx, \"cpu_us_hydrus_minus_bare\": $cpu_hy_bare, \"serial_added_hydrus_over_nginx\": $added_ratio},"
  echo "  \"decision_p99_seconds_bucket\": \"${decision_p99:-n/a}\", \"overhead_p50_seconds_bucket\": \"${overhead_p50:-n/a}\", \"overhead_p99_seconds_bucket\": \"${overhead_p99:-n/a}\", \"log_records_written\": ${records:-0}, \"log_records_dropped\": ${dropped:-0}"
  echo "}"
} > benches/results/load.json
{
  echo "| target | requests/s | CPU us / request | p50 ms | p99 ms | serial p50 ms | serial p99 ms | serial p50 added over direct, ms |"
  echo "|---|---|---|---|---|---|---|---|"
  for n in "${names[@]}"; do
    a="$(added "$n")"; [ "$n" = direct ] && a="-"
    echo "| $n | ${rps[$n]} | ${cpu[$n]} | ${p50[$n]} | ${p99[$n]} | ${s50[$n]} | ${s99[$n]} | $a |"
  done
  echo
  echo "Requests/s: hydrus (full chain) / nginx **$hy_ngx**; hydrus (empty chain) / nginx $hy_empty_ngx; full / empty chain $full_empty; hydrus / HAProxy $hy_hap; hydrus (empty) / bare pingora $empty_bare; bare pingora / nginx $bare_ngx."
  echo "CPU per request: hydrus / nginx **$cpu_hy_ngx**; bare pingora / nginx $cpu_bare_ngx; hydrus minus bare pingora **$cpu_hy_bare us**. Serial latency added over direct: hydrus / nginx **$added_ratio**."
  if [ "${TRACING:-0}" = 1 ]; then
    echo "Tracing (full chain, same rounds): CPU per request at 1% / off **$(ratio "${cpu[hydrus-trace1]}" "${cpu[hydrus]}")**, at 100% / off **$(ratio "${cpu[hydrus-trace100]}" "${cpu[hydrus]}")**, 100% to a dead collector / off $(ratio "${cpu[hydrus-trace-dead]}" "${cpu[hydrus]}"); loaded p99 off ${p99[hydrus]} ms, dead collector ${p99[hydrus-trace-dead]} ms; serial p99 off ${s99[hydrus]} ms, dead collector ${s99[hydrus-trace-dead]} ms."
  fi
  echo "hydrus's own histograms (bucket bounds): decision p99 under ${decision_p99:-n/a} s; latency added p50 under ${overhead_p50:-n/a} s, p99 under ${overhead_p99:-n/a} s. Log records written: ${records:-0}, dropped: ${dropped:-0}."
  echo
  echo "$(nproc) CPUs shared by wrk, the upstream and the proxies; $threads proxy threads/processes each; wrk -t1 -c$conns -d${secs}s (loaded) and -c1 -d${serial_secs}s (serial), $rounds interleaved rounds (medians), $(date -u +%F). Command: \`${TRACING:+TRACING=$TRACING }${COMPARE:+COMPARE=\"$COMPARE\" }${BARE_COMPARE:+BARE_COMPARE=\"$BARE_COMPARE\" }bash benches/load.sh $secs $rounds $conns\`."
} > benches/results/load.md
cat benches/results/load.md
