#!/usr/bin/env bash
# Heap allocations per request of hydrus, empty chain and full chain (rollout 50% + hydrus
# filter + file log), from a build with the `alloc-stats` feature: the process's allocation
# count (hydrus_process_allocations_total) over a wrk run divided by the requests served.
# Everything the process allocates counts: pingora's request path, hydrus's hooks and the log
# sink thread's encoding.
#
# Usage: benches/allocs.sh [SECONDS, default 5]
# Env: HYDRUS_BIN (an alloc-stats build; default: built here into target/alloc-stats).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
secs=${1:-5}
if [ -z "${HYDRUS_BIN:-}" ]; then
  cargo build --release --quiet --bin hydrus --features alloc-stats --target-dir target/alloc-stats
  HYDRUS_BIN=./target/alloc-stats/release/hydrus
fi
bench_workdir 0.3
UP=18380; FULL=18381; EMPTY=18382; ADMF=18391; ADME=18392
cat > "$work/up.conf" <<CONF
worker_processes 1;
pid $work/up.pid;
error_log $work/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '{"items":[3,1,4]}'; } } }
CONF
nginx -c "$work/up.conf" -p "$work" -g 'daemon off;' & pids+=($!)
common="threads: 1
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
printf 'listen: 127.0.0.1:%s\nadmin: { listen: "127.0.0.1:%s" }\n%s\nfilters: []\n' $EMPTY $ADME "$common" > "$work/empty.yaml"
RUST_LOG=warn "$HYDRUS_BIN" serve --config "$work/full.yaml" & pids+=($!)
RUST_LOG=warn "$HYDRUS_BIN" serve --config "$work/empty.yaml" & pids+=($!)
req_lua "$work/req.lua"
for port in $ADMF $ADME; do
  for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$port/ready" && break; sleep 0.1; done
done
count() { # admin-port -> "allocations requests"
  local m
  m=$(curl -s "127.0.0.1:$1/metrics")
  echo "$(awk '/^hydrus_process_allocations_total/ {print $2}' <<<"$m") $(awk '/^hydrus_requests_total/ {n+=$2} END {print n+0}' <<<"$m")"
}
echo "| chain | requests | allocations / request |"
echo "|---|---|---|"
for t in "full $FULL $ADMF" "empty $EMPTY $ADME"; do
  set -- $t
  wrk -t1 -c16 -d1s -s "$work/req.lua" "http://127.0.0.1:$2/rank" >/dev/null  # warm up
  sleep 1.2   # let the log sink write what it took
  read -r a0 r0 < <(count "$3")
  wrk -t1 -c16 -d"${secs}s" -s "$work/req.lua" "http://127.0.0.1:$2/rank" >/dev/null
  sleep 1.2
  read -r a1 r1 < <(count "$3")
  awk -v c="$1" -v a=$((a1 - a0)) -v r=$((r1 - r0)) 'BEGIN { printf "| %s | %d | %.1f |\n", c, r, (a - 0) / r }'
done
echo
echo "wrk -t1 -c16 -d${secs}s, hydrus threads: 1, $(date -u +%F). Command: \`bash benches/allocs.sh $secs\`."
