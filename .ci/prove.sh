# shellcheck shell=bash
# .ci/prove.sh: `./build.sh test-arches [ARCH...]`, the per-arch part of
# `./build.sh test`: each binary binaries.sh built, through the integration
# suites (natively or under qemu-user, as packaging/arches.sh says) and its
# unit tests built for its arch.

# Proving each binary (docs/packaging.md, "Proving each binary"). The test
# harness runs natively and launches dist/<triple>/sp_wrapper through
# SP_WRAPPER_RUNNER: the row's qemu program for the arches whose suites
# column (packaging/arches.sh) says qemu, the ARM builds; nothing for those
# it says native: i686, which this x86_64 kernel runs itself (its real
# 32-bit system-call ABI, which qemu-i386 would only translate, and the
# seccomp filter's i386 table). The jobs' /bin/sh is the host's: with no
# binfmt_misc entry, qemu-user's execve hands a native executable to the kernel.

# prove_arch TRIPLE: unit tests built for it, the conformance, record,
# delivery, guardian, crash, security, check, minion_config, dead_dns,
# bounded and reconnects
# suites (root-only tests included), the
# old-kernel suite where the filter has the arch's table, and the after-2038
# check. Prints each suite's time. (The tests of giving up and the slow
# links shorten the agent's timings with the test-only SP_TEST_TIMINGS, so
# they run everywhere, the old-kernel filter and qemu included.)

prove_arch() {
    local triple=$1 runner='' unit_runner_var faker started
    # shellcheck disable=SC2034 # arch_fields' outputs, local to this function; not all are read
    local deb_arch rpm_arch qemu suites kernel_floor elf_machine
    arch_fields "$triple"
    # libfaketime runs under qemu-user on every arch; the suites only where
    # the table says so.
    faker=$qemu
    [ "$suites" = native ] || runner=$qemu
    local bin="$PWD/dist/$triple/sp_wrapper"
    unit_runner_var="CARGO_TARGET_$(echo "$triple" | tr 'a-z-' 'A-Z_')_RUNNER"
    timed() {
        local what=$1
        shift
        started=$SECONDS
        "$@"
        ARCH_TIMES+=("$(printf '%-32s %-44s %4d s' "$triple" "$what" $((SECONDS - started)))")
    }
    if [ "$triple" = "$ARMV7" ] && ! armv7_prebuilt; then
        say "$triple: unit tests built for it, run under $runner"
        timed "unit tests (std from source, qemu-arm)" armv7_unit_tests
    elif [ "$triple" != "$TARGET" ]; then
        say "$triple: unit tests built for it${runner:+, run under $runner}"
        # (cargo refuses an empty runner variable: set only with a runner)
        timed "unit tests${runner:+ ($runner)}" fail_if_selects_nothing env ${runner:+"$unit_runner_var=$runner"} \
            cargo test --release --locked --target "$triple" --lib
    fi
    if [ "$triple" = "$TARGET" ]; then
        # The host build ran every suite and this very file the conformance
        # suite under the old-kernel filter (run_tests): only the 2040 check is new.
        say "$triple: a job in 2040 (libfaketime in $faker)"
        timed "after 2038 ($faker + libfaketime)" fail_if_selects_nothing env SP_WRAPPER_BIN="$bin" SP_WRAPPER_RUNNER="$faker" \
            cargo test --release --locked --test integration -- --include-ignored --exact arch::a_job_in_2040_is_recorded_with_2040_times
        return 0
    fi
    say "$triple: the conformance, record, delivery, guardian, crash, security, check, minion_config, dead_dns, bounded and reconnects suites${runner:+, under $runner}"
    timed "conformance .. security, check, minion_config, dead_dns, bounded, reconnects" fail_if_selects_nothing env SP_WRAPPER_BIN="$bin" SP_WRAPPER_RUNNER="$runner" \
        cargo test --release --locked --test integration -- --include-ignored \
        conformance:: record:: delivery:: guardian:: crash:: security:: check:: minion_config:: dead_dns:: bounded:: reconnects::
    # (The host's own old-kernel run is in run_tests; it returned above.)
    if [ -z "$runner" ]; then
        say "$triple: old-kernel tests ($kernel_floor, $deb_arch table) and the conformance suite under the filter"
        timed "old kernel $kernel_floor ($deb_arch seccomp table)" fail_if_selects_nothing env SP_TEST_OLD_KERNEL=1 SP_WRAPPER_BIN="$bin" \
            cargo test --release --locked --test integration -- --include-ignored old_kernel:: conformance::
    else
        say "SKIPPED $triple old-kernel tests (floor: Linux $kernel_floor): the binary runs under qemu-user, which translates its system calls into the host's, so a host seccomp filter cannot play the guest's old kernel (docs/packaging.md)"
    fi
    say "$triple: a job in 2040 (libfaketime in $faker)"
    timed "after 2038 ($faker + libfaketime)" fail_if_selects_nothing env SP_WRAPPER_BIN="$bin" SP_WRAPPER_RUNNER="$faker" \
        cargo test --release --locked --test integration -- --include-ignored --exact arch::a_job_in_2040_is_recorded_with_2040_times
}

# armv7's unit tests: std and the test harness from source, with unwinding
# (the harness catches each test's panic), so the release profile's
# panic=abort is overridden (else cargo builds std both ways and the crates
# see two `core`s), in their own target directory (apart from the shipped
# binary's panic=abort std).
armv7_unit_tests() {
    local unwind
    unwind="$PWD/$ARMV7_UNWIND"
    RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=target/armv7-test CARGO_PROFILE_RELEASE_PANIC=unwind \
        CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_RUNNER=qemu-arm \
        fail_if_selects_nothing cargo test --release --locked --target "$ARMV7" --lib -Zbuild-std=std,panic_unwind \
        --config "target.$ARMV7.rustflags=['-C','link-self-contained=no','-L','native=$ARMV7_MUSL','-L','native=$unwind','-C','link-arg=$ARMV7_MUSL/crt1.o','-C','link-arg=$ARMV7_MUSL/crti.o','-C','link-arg=$ARMV7_MUSL/crtn.o']"
}

ARCH_TIMES=()
# prove_all_arches [ARCH...]: build-all and prove every arch that built, or
# build and prove only the arches named.
prove_all_arches() {
    local triple arch
    if [ $# -eq 0 ]; then
        build_all
    else
        for arch in "$@"; do
            triple=$(triple_of "$arch")
            SKIP_REASON=
            build_arch "$triple" || {
                echo "build.sh: $arch cannot be built here: $SKIP_REASON" >&2
                exit 1
            }
            BUILT_ARCHES+=("$triple")
        done
    fi
    for triple in "${BUILT_ARCHES[@]}"; do
        prove_arch "$triple"
    done
    say "per-arch proofs (times):"
    printf '    %s\n' "${ARCH_TIMES[@]}"
}
