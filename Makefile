# The two commands of the README. Each installs what it needs first (.ci/install).
.PHONY: run test bench

# Run hydrus on its embedded default config, with the built-in demo ranking upstream.
run:
	bash .ci/install build
	cargo run --release -- serve --config config/hydrus.yaml

# Run every test: unit, property and integration (real binary, upstreams, broker, Prometheus).
test:
	bash .ci/install test
	cargo nextest run --workspace --locked --no-fail-fast
	bash vendor/test.sh
