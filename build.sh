#!/usr/bin/env bash
# build.sh: build, test, demo, benchmark and package sp_wrapper.
#
#   ./build.sh [build]     static release binary -> dist/sp_wrapper (default)
#   ./build.sh build ARCH  one arch -> dist/<triple>/sp_wrapper; ARCH is a row of
#                          packaging/arches.sh by its short name (aarch64), Debian
#                          name (arm64) or triple
#   ./build.sh build-all   every arch -> dist/<triple>/sp_wrapper; armv7 is skipped, with
#                          the reason, when its toolchain is missing (docs/packaging.md)
#   ./build.sh test-arches [ARCH...]  the per-arch part of `test`: each binary proven
#   ./build.sh build-local release binary for this host -> dist/sp_wrapper-local
#   ./build.sh test        everything CI runs (installs what it needs first)
#   ./build.sh deps        the musl target, .venv with the real Saltpeter endpoint,
#                          and the packaging tools from Debian
#   ./build.sh demo        build, run one job against the real endpoint, show the result
#   ./build.sh soak [N]    the host and per-arch integration suites N times (10), every
#                          other round with every core kept busy by a CPU hog
#   ./build.sh bench       side-by-side benchmark against the Python wrapper 0.9.30
#   ./build.sh e2e         end-to-end suite: salt-master, salt-minion, Saltpeter server (root)
#   ./build.sh e2e-bench   Salt's cmd.run_all time, sp_wrapper vs the Python wrapper (root)
#   ./build.sh salt-id     the machine id vs the Salts of tests/salt_pins (root; tests/salt_id)
#   ./build.sh old-salt    salt-call --local cmd.run_all of the agent on the older Salts of tests/salt_pins (root)
#   ./build.sh package     a .deb and an .rpm for each arch whose binary is in dist/:
#                          x86_64 (built here), the others only after build-all
#                          (or build ARCH); it names the arches it skipped
#   ./build.sh repro [ARCH...]  package, then the x86_64 (or ARCH's) binary and packages
#                          built again elsewhere (path, HOME, no rust-src) must be identical
#   ./build.sh shellcheck  the lint of every shell script (part of `test`)
#   ./build.sh clean
#   ./build.sh help        this text
set -euo pipefail
cd "$(dirname "$0")"

# This file is the one entry point and only dispatches: each job lives in
# .ci/, beside CI's .ci/run, one file each (what they share: .ci/lib.sh).
# The jobs are sourced, not run as scripts of their own: a verb that runs
# several (test: deps, the builds, the proofs, the packages, the Salt and
# e2e suites) needs what each leaves for the next (BUILT_ARCHES, SKIP_REASON,
# ARCH_TIMES, SALT_ORACLES, VENV_PIP), and one shell under this `set -e`
# stops at the first failure, with one trap for a TERM. Each file defines
# variables and functions only, so the order matters only for lib.sh
# (first: the values the others' are made from).
# shellcheck source=.ci/lib.sh
. .ci/lib.sh
# shellcheck source=.ci/deps.sh
. .ci/deps.sh
# shellcheck source=.ci/binaries.sh
. .ci/binaries.sh
# shellcheck source=.ci/prove.sh
. .ci/prove.sh
# shellcheck source=.ci/lint.sh
. .ci/lint.sh
# shellcheck source=.ci/test.sh
. .ci/test.sh
# shellcheck source=.ci/package.sh
. .ci/package.sh
# shellcheck source=.ci/salt.sh
. .ci/salt.sh
# shellcheck source=.ci/e2e.sh
. .ci/e2e.sh
# shellcheck source=.ci/soak.sh
. .ci/soak.sh
# shellcheck source=.ci/bench.sh
. .ci/bench.sh

# usage: the opening comment of this file, the one list of the verbs.
usage() {
    sed -n '4,/^set -euo/{/^#/{s/^# \{0,1\}//;p}}' build.sh
    echo "ARCH: $(arch_triples | sed 's/-.*//' | paste -sd '|'), or its Debian name or triple (packaging/arches.sh)"
}

case "${1:-build}" in
    build)
        if [ -n "${2:-}" ]; then
            SKIP_REASON=
            # (An assignment, so an unknown ARCH stops here, under set -e.)
            triple=$(triple_of "$2")
            build_arch "$triple" || {
                echo "build.sh: $2 cannot be built here: $SKIP_REASON" >&2
                exit 1
            }
        else
            build
        fi
        ;;
    build-all) build_all ;;
    test-arches)
        # The per-arch part of ./build.sh test alone (after ./build.sh deps).
        export SP_TEST_PYTHON="$PWD/$PYTHON"
        shift
        prove_all_arches "$@"
        ;;
    build-local) build_local ;;
    test) run_tests ;;
    deps) deps ;;
    demo) demo ;;
    bench) bench ;;
    soak) soak "${2:-10}" ;;
    package) package ;;
    repro)
        # After build-all for other arches than x86_64.
        package
        shift
        repro_check "$@"
        ;;
    e2e) e2e ;;
    e2e-bench) deps; build; e2e_bench ;;
    salt-id) build; salt_id_suite ;;
    old-salt) deps_endpoint; build; old_salt_suite ;;
    shellcheck) deps_shellcheck; lint_shell ;;
    clean) cargo clean; rm -rf dist ;;
    help | -h | --help) usage ;;
    *)
        echo "build.sh: unknown verb '$1'" >&2
        usage >&2
        exit 2
        ;;
esac
