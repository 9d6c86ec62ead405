# shellcheck shell=bash
# .ci/bench.sh: `./build.sh demo`, `bench` and `e2e-bench`: the agent run
# outside the tests, to see it work and for the figures of
# docs/performance.md.

demo() {
    deps_endpoint
    build
    say "running a job through dist/sp_wrapper against the real Saltpeter endpoint"
    "$PYTHON" tests/harness/demo.py dist/sp_wrapper
}

bench() {
    deps
    build
    cargo build --release --locked --example ack_sink
    say "benchmark: sp_wrapper vs the Python wrapper 0.9.30 (takes a few minutes)"
    "$PYTHON" tests/bench/bench.py --wrapper dist/sp_wrapper --python-wrapper "$VENV/ref0930" --sink target/release/examples/ack_sink
    e2e_bench
}

e2e_bench() {
    if [ "$(id -u)" -ne 0 ]; then
        say "e2e bench skipped: it runs salt-master and salt-minion as root"
        return 0
    fi
    deps_e2e
    say "Salt's cmd.run_all time: sp_wrapper vs the Python wrapper 0.9.30 through salt-master and salt-minion"
    "$E2E_PYTHON" tests/e2e/bench_run_all.py --wrapper dist/sp_wrapper \
        --python-wrapper "$VENV/ref0930/saltpeter/wrapper.py" --runs 20
}
