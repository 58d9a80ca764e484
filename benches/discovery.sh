#!/usr/bin/env bash
# Endpoints that move under wrk load: hydrus in front of a name (served by dnsmasq on a loopback
# port) whose addresses go 2 -> 4 -> 1 while wrk sends; nginx answers on 127.0.0.2-5 at one port.
# Prints wrk's summary (any socket error or non-2xx response is a failed request), how many
# requests each address served before and after each change, and hydrus's discovery counters.
#
# Usage: benches/discovery.sh [SECONDS per phase, default 5] [CONNECTIONS, default 16]
# Env: HYDRUS_BIN (the binary to run; default a release build made here).
set -euo pipefail
cd "$(dirname "$0")/.."
phase=${1:-5}
conns=${2:-16}
. benches/lib.sh
need_debian nginx wrk dnsmasq-base
if [ -z "${HYDRUS_BIN:-}" ]; then
  cargo build --release --quiet --bin hydrus
  HYDRUS_BIN=target/release/hydrus
fi
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
port=$((21000 + RANDOM % 4000)); dns=$((port + 1)); proxy=$((port + 2)); admin=$((port + 3))

# nginx: one server per address, each counting its requests in its own access log.
{
  echo "worker_processes 1; pid $dir/nginx.pid; error_log $dir/nginx.err; daemon off;"
  echo "events { worker_connections 4096; }"
  echo "http {"
  for i in 2 3 4 5; do
    echo "  server { listen 127.0.0.$i:$port; access_log $dir/r$i.log;"
    echo "    location / { return 200 '{\"ok\":$i}'; } }"
  done
  echo "}"
} > "$dir/nginx.conf"
nginx -c "$dir/nginx.conf" -p "$dir" & pids+=($!)

hosts() { for a in "$@"; do echo "127.0.0.$a ranker.bench.test"; done > "$dir/hosts"; }
hosts 2 3
dnsmasq -k --no-resolv --no-hosts --bind-interfaces --listen-address=127.0.0.1 --local-ttl=1 \
  --user=root --port=$dns --addn-hosts="$dir/hosts" --pid-file="$dir/dnsmasq.pid" 2>/dev/null &
dnsmasq_pid=$!; pids+=($dnsmasq_pid)

cat > "$dir/hydrus.yaml" <<YAML
listen: 127.0.0.1:$proxy
admin: { listen: 127.0.0.1:$admin }
clusters:
  ranking:
    endpoints: ["ranker.bench.test:$port"]
    discovery: { interval: 1s, resolver: "127.0.0.1:$dns" }
route:
  cluster: ranking
YAML
RUST_LOG=info "$HYDRUS_BIN" serve --config "$dir/hydrus.yaml" > "$dir/hydrus.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/ready" >/dev/null && break; sleep 0.1; done

served() { for i in 2 3 4 5; do printf '%s=%s ' "127.0.0.$i" "$(wc -l < "$dir/r$i.log" 2>/dev/null || echo 0)"; done; echo; }
wrk -t2 -c"$conns" -d"$((phase * 3))s" "http://127.0.0.1:$proxy/rank" > "$dir/wrk.txt" &
wrk_pid=$!
sleep "$phase"; echo "2 addresses, after ${phase}s: $(served)"
hosts 2 3 4 5; kill -HUP "$dnsmasq_pid"
sleep "$phase"; echo "4 addresses, after ${phase}s: $(served)"
hosts 5; kill -HUP "$dnsmasq_pid"
sleep 2; before=$(served)
wait "$wrk_pid"
echo "1 address, 2 s after the change: $before"
echo "1 address, at the end:          $(served)"
cat "$dir/wrk.txt"
curl -s "http://127.0.0.1:$admin/metrics" | grep -E '^hydrus_(cluster_endpoints|discovery_updates_total)'
echo "date: $(date -u +%Y-%m-%dT%H:%MZ) command: benches/discovery.sh $phase $conns"
