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
