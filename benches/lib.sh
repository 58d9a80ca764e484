# Shared by the bench scripts (sourced, not run).

# need_debian PKG...: install from Debian the packages neither installed nor on PATH.
need_debian() {
  local missing=() p
  for p in "$@"; do
    command -v "$p" >/dev/null 2>&1 || dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# full_chain_filters LOG_DIR: the `filters:` section of the full chain the benches measure
# (rollout 50%, hydrus with four strategies, the file log into LOG_DIR). From the repo root.
full_chain_filters() {
  cat <<CONF
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
      file: { dir: $1 }
CONF
}

# req_lua FILE: wrk's script, a user id (varying) and a QoE score per request, as a front end
# would send them.
req_lua() {
  cat > "$1" <<'LUA'
local i = 0
request = function()
  i = i + 1
  local q = (i * 37 % 100) / 100
  return wrk.format("GET", "/rank?user=1", {["x-user-id"] = "user-" .. (i % 100000), ["x-qoe-score"] = string.format("%.2f", q)})
end
LUA
}

# bench_workdir [GRACE]: a temporary directory in $work and an empty $pids; at exit, every
# process in $pids is killed, given GRACE seconds (default 0.5) to go, and $work removed.
bench_workdir() {
  work=$(mktemp -d)
  pids=()
  _bench_grace=${1:-0.5}
  trap _bench_cleanup EXIT
}
_bench_cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep "$_bench_grace"
  rm -rf "$work"
}
