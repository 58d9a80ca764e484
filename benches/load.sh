#!/usr/bin/env bash
# Whole-proxy load benchmark, on loopback, in one run and interleaved:
#   direct      wrk -> nginx upstream (a small JSON body)
#   hydrus      wrk -> hydrus, full chain (rollout 50% + hydrus filter + file log) -> upstream
#   hydrus-empty wrk -> hydrus, empty chain -> upstream
#   pingora-bare wrk -> a bare pingora proxy (examples/bare_proxy.rs): the floor under hydrus
#   nginx       wrk -> nginx reverse proxy (keepalive upstream) -> upstream
#   haproxy     wrk -> HAProxy -> upstream
# Reports requests/s and p50/p99 latency (median of the rounds), the ratios hydrus/nginx and
# full/empty chain, and the decision-time p99 from hydrus's own histogram. Writes
# benches/results/load.json and benches/results/load.md.
#
# Usage: benches/load.sh [SECONDS per run, default 10] [ROUNDS, default 3] [CONNECTIONS, default 32]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
conns=${3:-32}
threads=${HYDRUS_BENCH_THREADS:-2}

for p in nginx haproxy wrk cmake; do
  dpkg -s "$p" >/dev/null 2>&1 || need="${need:-} $p"
done
if [ -n "${need:-}" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
cargo build --release --quiet --bin hydrus --example bare_proxy

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT

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
nginx -c "$work/nginx-rp/nginx.conf" -p "$work/nginx-rp" -g 'daemon off;' & pids+=($!)

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
haproxy -f "$work/haproxy.cfg" -db & pids+=($!)

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
filters:
  - rollout: { percent: 50 }
  - hydrus:
      default_strategy: s20
      ktable: { path: $PWD/config/ktable.yaml }
      strategies:
        - { name: s10, cost: 6, qoe_scale: 0.90, set_query: { candidates: "10" } }
        - { name: s20, cost: 10, qoe_scale: 1.00, set_query: { candidates: "20" } }
        - { name: s40, cost: 18, qoe_scale: 1.08, cluster: ranking-large, set_headers: { x-model: large }, set_query: { candidates: "40" } }
        - { name: s80, cost: 34, qoe_scale: 1.12, cluster: ranking-large, set_headers: { x-model: large }, set_query: { candidates: "80" } }
  - log:
      file: { dir: $work/logs }
CONF
cat > "$work/empty.yaml" <<CONF
listen: 127.0.0.1:$EMPTY
admin: { listen: "127.0.0.1:$ADME" }
$common
filters: []
CONF
RUST_LOG=warn ./target/release/hydrus serve --config "$work/full.yaml" & pids+=($!)
RUST_LOG=warn ./target/release/hydrus serve --config "$work/empty.yaml" & pids+=($!)
RUST_LOG=warn ./target/release/examples/bare_proxy 127.0.0.1:$BARE 127.0.0.1:$UP "$threads" & pids+=($!)

# Requests carry a user id (varying) and a QoE score, as a front end would send them.
cat > "$work/req.lua" <<'LUA'
local i = 0
request = function()
  i = i + 1
  local q = (i * 37 % 100) / 100
  return wrk.format("GET", "/rank?user=1", {["x-user-id"] = "user-" .. (i % 100000), ["x-qoe-score"] = string.format("%.2f", q)})
end
LUA

for port in $UP $FULL $EMPTY $BARE $NGX $HAP; do
  for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$port/" && break; sleep 0.1; done
done

# Returns "rps p50_ms p99_ms" for one wrk run.
run() {
  local out
  out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$work/req.lua" "http://127.0.0.1:$1/rank" 2>&1)
  local rps p50 p99 errs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
  [ -z "$errs" ] || echo "warning: $errs" >&2
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}
to_ms() { # wrk prints 812.00us / 1.23ms / 1.02s
  awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'
}

names=(direct hydrus hydrus-empty pingora-bare nginx haproxy)
ports=($UP $FULL $EMPTY $BARE $NGX $HAP)
declare -A res
for r in $(seq "$rounds"); do
  for i in "${!names[@]}"; do
    res[${names[$i]},$r]=$(run "${ports[$i]}")
    echo "round $r ${names[$i]}: ${res[${names[$i]},$r]}" >&2
  done
done

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
declare -A rps p50 p99
for n in "${names[@]}"; do
  rps[$n]=$(for r in $(seq "$rounds"); do echo "${res[$n,$r]}" | awk '{print $1}'; done | median)
  p50[$n]=$(for r in $(seq "$rounds"); do echo "${res[$n,$r]}" | awk '{print $2}'; done | median)
  p99[$n]=$(for r in $(seq "$rounds"); do echo "${res[$n,$r]}" | awk '{print $3}'; done | median)
done

# Decision-time p99 from hydrus's own histogram (upper bound of the bucket holding the 99th %).
metrics=$(curl -s "127.0.0.1:$ADMF/metrics")
decision_p99=$(awk '
  /^hydrus_decision_seconds_bucket/ { match($0, /le="[^"]+"/); le=substr($0, RSTART+4, RLENGTH-5); b[++n]=le; c[n]=$2 }
  /^hydrus_decision_seconds_count/ { total=$2 }
  END { for (i=1;i<=n;i++) if (c[i] >= 0.99*total) { print b[i]; exit } }' <<<"$metrics")
records=$(awk '/^hydrus_log_records_total\{result="written"\}/ {print $2}' <<<"$metrics")
dropped=$(awk '/^hydrus_log_records_total\{result="dropped"\}/ {print $2}' <<<"$metrics")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a/b }'; }
hy_ngx=$(ratio "${rps[hydrus]}" "${rps[nginx]}")
hy_empty_ngx=$(ratio "${rps[hydrus-empty]}" "${rps[nginx]}")
full_empty=$(ratio "${rps[hydrus]}" "${rps[hydrus-empty]}")
hy_hap=$(ratio "${rps[hydrus]}" "${rps[haproxy]}")
empty_bare=$(ratio "${rps[hydrus-empty]}" "${rps[pingora-bare]}")
bare_ngx=$(ratio "${rps[pingora-bare]}" "${rps[nginx]}")

mkdir -p benches/results
{
  echo "{"
  echo "  \"date\": \"$(date -u +%FT%TZ)\", \"cpus\": $(nproc), \"seconds\": $secs, \"rounds\": $rounds, \"connections\": $conns, \"proxy_threads\": $threads,"
  echo "  \"results\": {"
  for i in "${!names[@]}"; do
    n=${names[$i]}; sep=","; [ "$i" -eq $((${#names[@]}-1)) ] && sep=""
    echo "    \"$n\": {\"rps\": ${rps[$n]}, \"p50_ms\": ${p50[$n]}, \"p99_ms\": ${p99[$n]}}$sep"
  done
  echo "  },"
  echo "  \"ratios\": {\"hydrus_over_nginx\": $hy_ngx, \"hydrus_empty_over_nginx\": $hy_empty_ngx, \"full_over_empty_chain\": $full_empty, \"hydrus_over_haproxy\": $hy_hap, \"hydrus_empty_over_pingora_bare\": $empty_bare, \"pingora_bare_over_nginx\": $bare_ngx},"
  echo "  \"decision_p99_seconds_bucket\": \"${decision_p99:-n/a}\", \"log_records_written\": ${records:-0}, \"log_records_dropped\": ${dropped:-0}"
  echo "}"
} > benches/results/load.json
{
  echo "| target | requests/s | p50 ms | p99 ms |"
  echo "|---|---|---|---|"
  for n in "${names[@]}"; do echo "| $n | ${rps[$n]} | ${p50[$n]} | ${p99[$n]} |"; done
  echo
  echo "hydrus (full chain) / nginx: **$hy_ngx**; hydrus (empty chain) / nginx: **$hy_empty_ngx**; full / empty chain: **$full_empty**; hydrus / HAProxy: **$hy_hap**; hydrus (empty chain) / bare pingora: **$empty_bare**; bare pingora / nginx: **$bare_ngx**."
  echo "Decision time p99 (hydrus_decision_seconds): under **${decision_p99:-n/a} s**. Log records written: ${records:-0}, dropped: ${dropped:-0}."
  echo
  echo "$(nproc) CPUs, $threads proxy threads/processes each, wrk -t1 -c$conns, ${secs}s x $rounds interleaved rounds (medians), $(date -u +%F)."
} > benches/results/load.md
cat benches/results/load.md
