#!/usr/bin/env bash
# A broken endpoint under load: wrk against hydrus and nginx (defaults), each in front of a good
# endpoint (nginx serving a small body) and a broken one that resets, answers garbage or hangs.
# Prints, per mode and proxy: requests, requests/s, failed requests (non-2xx + socket errors), and
# for hydrus the attempts the broken endpoint got and the ejections. wrk's own timeout is 5 s.
#
# Usage: benches/faults.sh [SECONDS per run, default 10] [CONNECTIONS, default 32]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-32}
. benches/lib.sh
need_debian nginx wrk cmake python3
cargo build --release --quiet --bin hydrus

bench_workdir

GOOD=18280; BAD=18281; HY=18282; ADM=18283; NGX=18284

cat > "$work/good.conf" <<CONF
worker_processes 1;
pid $work/good.pid;
error_log $work/good.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$GOOD; location / { default_type application/json; return 200 '{"items":[1,2,3]}'; } } }
CONF
nginx -c "$work/good.conf" -p "$work" -g 'daemon off;' & pids+=($!)

cat > "$work/broken.py" <<'PY'
import socket, sys, threading, time
mode, port = sys.argv[1], int(sys.argv[2])
held = []
count = [0]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen(1024)
def serve(c):
    count[0] += 1
    c.settimeout(1)
    try:
        if mode == "reset":
            c.recv(1, socket.MSG_PEEK); c.close()          # unread request: the kernel resets
        elif mode == "garbage":
            c.recv(65536); c.sendall(b"\x00\x01garbage\r\n\r\n"); c.close()
        else:
            c.recv(65536); held.append(c)                 # hang: never answer
    except Exception:
        c.close()
def report():
    while True:
        time.sleep(0.5)
        with open(sys.argv[3], "w") as f: f.write(str(count[0]))
threading.Thread(target=report, daemon=True).start()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY

cat > "$work/ngx.conf" <<CONF
worker_processes 2;
pid $work/ngx.pid;
error_log $work/ngx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream pool { server 127.0.0.1:$GOOD; server 127.0.0.1:$BAD; keepalive 64; }
  server { listen 127.0.0.1:$NGX; location / { proxy_pass http://pool; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$work/hydrus.yaml" <<CONF
listen: 127.0.0.1:$HY
threads: 2
admin: { listen: "127.0.0.1:$ADM" }
shutdown: { grace_period: 0s, timeout: 1s, upgrade_sock: $work/up.sock }
clusters:
  pool: { endpoints: ["127.0.0.1:$GOOD", "127.0.0.1:$BAD"], read_timeout: 2s }
route: { cluster: pool }
CONF

run() { # proxy port -> "requests rps failed"
  local out req rps fail
  out=$(wrk -t1 -c"$conns" -d"${secs}s" --timeout 5s "http://127.0.0.1:$1/rank" 2>&1)
  req=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  fail=$(awk '/Non-2xx/ {n+=$NF} /Socket errors/ {gsub(",",""); for(i=1;i<=NF;i++) if ($i ~ /^[0-9]+$/) n+=$i} END {print n+0}' <<<"$out")
  echo "$req $rps $fail"
}

printf "| broken endpoint | proxy | requests | requests/s | failed | attempts on the broken one | ejections |\n|---|---|---|---|---|---|---|\n"
for mode in reset garbage hang; do
  rm -f "$work/count"
  python3 "$work/broken.py" "$mode" $BAD "$work/count" & bp=$!; pids+=($bp)
  for _ in $(seq 50); do [ -s "$work/count" ] && break; sleep 0.1; done
  RUST_LOG=warn ./target/release/hydrus serve --config "$work/hydrus.yaml" 2>>"$work/hydrus.log" & hp=$!; pids+=($hp)
  for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$ADM/ready" && break; sleep 0.1; done
  before=$(cat "$work/count" 2>/dev/null || echo 0)
  read -r req rps fail < <(run $HY)
  sleep 0.6
  after=$(cat "$work/count")
  metrics=$(curl -s "127.0.0.1:$ADM/metrics")
  ej=$(awk '/^hydrus_outlier_ejections_total/ {n+=$2} END {print n+0}' <<<"$metrics")
  echo "| $mode | hydrus | $req | $rps | $fail | $((after - before)) | $ej |"
  grep -E '^hydrus_upstream_(retries|errors)_total' <<<"$metrics" | grep -v ' 0$' >&2 || true
  kill $hp; wait $hp 2>/dev/null || true
  nginx -c "$work/ngx.conf" -p "$work" -g 'daemon off;' & np=$!; pids+=($np)
  sleep 0.3
  read -r req rps fail < <(run $NGX)
  echo "| $mode | nginx | $req | $rps | $fail | | |"
  kill $np $bp; wait $np $bp 2>/dev/null || true
done
echo
echo "$(nproc) CPUs, wrk -t1 -c$conns -d${secs}s --timeout 5s, hydrus and nginx with their defaults, $(date -u +%F)."
