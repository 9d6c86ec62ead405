# shellcheck shell=bash
# .ci/soak.sh: `./build.sh soak [N]`, the host's and every arch's integration
# suites N times, every other round with each core kept busy (docs/testing.md).

# Soak (issue 17): a suite that passes once may still fail on the next fresh
# machine. N rounds of the host's integration suite (every test, root-only
# ones included) and each arch's suites (prove_arch), the even rounds with a
# busy loop per core at the same priority as the tests. Every failure is
# printed with its round, and the run ends with a table and exit 1 if any.

SOAK_HOG_PIDS=()
soak_hog_start() {
    local i
    # shellcheck disable=SC2034 # one loop per core: only the count matters
    for i in $(seq "$(nproc)"); do
        ( while :; do :; done ) &
        SOAK_HOG_PIDS+=($!)
    done
}
soak_hog_stop() {
    [ ${#SOAK_HOG_PIDS[@]} -eq 0 ] || kill "${SOAK_HOG_PIDS[@]}" 2>/dev/null || true
    wait "${SOAK_HOG_PIDS[@]}" 2>/dev/null || true
    SOAK_HOG_PIDS=()
}

# The host's part of ./build.sh test: every integration test (root-only and
# old-kernel ones included; arch:: is per arch), then OLD_KERNEL_SUITES
# (lib.sh) again under the 2.6.32 filter.
soak_host() {
    SP_WRAPPER_BIN="$PWD/dist/sp_wrapper" fail_if_selects_nothing cargo test --release --locked --test integration -- \
        --include-ignored --skip arch:: &&
        SP_TEST_OLD_KERNEL=1 SP_WRAPPER_BIN="$PWD/dist/sp_wrapper" fail_if_selects_nothing cargo test --release --locked \
            --test integration -- --include-ignored "${OLD_KERNEL_SUITES[@]}"
}

# soak_summary LOG STATUS: "ok, N passed" (summed over the log's test
# binaries) or the names of the failed tests.
soak_summary() {
    if [ "$2" -eq 0 ]; then
        echo "ok, $(grep -o '[0-9]* passed' "$1" | awk '{n += $1} END {print n + 0}') passed"
    else
        echo "FAILED (exit $2): $(grep -E '^test .* FAILED$' "$1" | sed 's/^test //; s/ \.\.\. FAILED$//' | tr '\n' ' ')"
    fi
}

soak() {
    local rounds=${1:-10} round hog started status failures=0 table=() triple log
    case "$rounds" in '' | *[!0-9]*) echo "build.sh: soak N: N must be a number of rounds" >&2; exit 2 ;; esac
    deps
    build
    export SP_TEST_PYTHON="$PWD/$PYTHON"
    cargo test --release --locked --test integration --no-run
    build_all
    mkdir -p target/soak
    trap 'soak_hog_stop' EXIT
    for round in $(seq "$rounds"); do
        hog=no
        if [ $((round % 2)) -eq 0 ]; then
            hog="yes ($(nproc) busy loops)"
            soak_hog_start
        fi
        say "soak round $round/$rounds, CPU hog: $hog"
        started=$SECONDS
        log="target/soak/round$round-host.log"
        status=0
        # (In the background, waited for: `set -e` holds inside it, which
        # it would not on the left of `||`.)
        soak_host >"$log" 2>&1 &
        wait $! || status=$?
        table+=("$(printf 'round %2d  hog %-3s  %-32s %4d s  %s' "$round" "${hog%% *}" host $((SECONDS - started)) "$(soak_summary "$log" $status)")")
        if [ $status -ne 0 ]; then
            failures=$((failures + 1))
            say "round $round host suite FAILED (log: $log)"
            sed -n '/^failures:$/,/^test result/p' "$log" | tail -n 80
        fi
        for triple in "${BUILT_ARCHES[@]}"; do
            [ "$triple" = "$TARGET" ] && continue
            started=$SECONDS
            log="target/soak/round$round-$triple.log"
            status=0
            # shellcheck disable=SC2034 # prove_arch's (prove.sh), each round's own
            ARCH_TIMES=()
            prove_arch "$triple" >"$log" 2>&1 &
            wait $! || status=$?
            table+=("$(printf 'round %2d  hog %-3s  %-32s %4d s  %s' "$round" "${hog%% *}" "$triple" $((SECONDS - started)) "$(soak_summary "$log" $status)")")
            if [ $status -ne 0 ]; then
                failures=$((failures + 1))
                say "round $round $triple FAILED (log: $log)"
                sed -n '/^failures:$/,/^test result/p' "$log" | tail -n 80
            fi
        done
        soak_hog_stop
        printf '    %s\n' "${table[@]}" | grep "^    round *$round " || true
    done
    trap - EXIT
    say "soak: $rounds rounds, $failures failed suite runs, $((SECONDS / 60)) min $((SECONDS % 60)) s"
    printf '    %s\n' "${table[@]}"
    [ "$failures" -eq 0 ]
}
