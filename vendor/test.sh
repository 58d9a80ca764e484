#!/usr/bin/env bash
# The patched crates' own unit tests, run by `make test`. Left out: the four of pingora-core's
# that reach the internet (one.one.one.one, 1.1.1.1), which fail offline patched or not.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/../target}
cargo test --locked --manifest-path pingora-core/Cargo.toml --lib -- --exact \
  --skip connectors::http::v1::tests::test_connect \
  --skip connectors::http::v1::tests::test_reuse_rejects_fd_mismatch \
  --skip connectors::l4::tests::test_conn_error_addr_not_avail \
  --skip connectors::l4::tests::test_conn_timeout
cargo test --locked --manifest-path pingora-proxy/Cargo.toml --lib
