# shellcheck shell=bash
# .ci/test.sh: `./build.sh test`, everything CI runs (.ci/run): the other
# jobs in turn, as timed steps (docs/testing.md lists them).

# step NAME: close the step that ran since the last call (its time goes to
# STEP_TIMES, printed at the end of the test), and name the next.
STEP_TIMES=()
STEP_NAME=
STEP_START=0
step() {
    [ -z "$STEP_NAME" ] || STEP_TIMES+=("$(printf '%-44s %5d s' "$STEP_NAME" $((SECONDS - STEP_START)))")
    STEP_NAME=$1
    STEP_START=$SECONDS
    [ -z "$1" ] || say "$1"
}

run_tests() {
    step "dependencies and the x86_64 build"
    deps
    build
    step "format and lint (rustfmt, clippy, shellcheck)"
    cargo fmt --all -- --check
    cargo clippy --locked --all-targets -- -D warnings
    lint_shell
    export SP_TEST_PYTHON="$PWD/$PYTHON"
    step "unit, integration and conformance tests (host build)"
    cargo test --release --locked
    # Tests that need root are #[ignore]d with their reason, so a plain
    # `cargo test` as a user reports them as ignored, never as passed. CI
    # runs as root: run them here, where they fail if they cannot run.
    step "tests that need root (SP_USER; a reused pid of the job, through ns_last_pid; a 1 MiB tmpfs)"
    fail_if_selects_nothing cargo test --release --locked --test integration -- --ignored security:: guardian:: bounded::
    step "dead DNS: the machine id's host-name lookups bounded (root: namespaces; the shipped static binary, musl's resolver)"
    SP_WRAPPER_BIN="$PWD/dist/sp_wrapper" fail_if_selects_nothing cargo test --release --locked --test integration -- --ignored dead_dns::
    file dist/sp_wrapper | grep -q 'statically linked' || { echo "build.sh: dist/sp_wrapper is not statically linked" >&2; exit 1; }
    # The host build above is linked with glibc, which has NSS: only the
    # static musl file can show that directory users reach it through getent.
    step "directory users (SP_USER known only to NSS, libnss-extrausers), static binary"
    SP_WRAPPER_BIN="$PWD/dist/sp_wrapper" fail_if_selects_nothing cargo test --release --locked --test integration -- --include-ignored --exact \
        security::sp_user_known_only_to_nss_runs_with_its_directory_ids_and_groups
    step "old-kernel tests: ${OLD_KERNEL_SUITES[*]} again, static binary under a seccomp filter (syscalls after 2.6.32 -> ENOSYS)"
    SP_TEST_OLD_KERNEL=1 SP_WRAPPER_BIN="$PWD/dist/sp_wrapper" fail_if_selects_nothing cargo test --release --locked --test integration -- --include-ignored "${OLD_KERNEL_SUITES[@]}"
    step "every arch: build-all, then each binary proven (under qemu-user where it is not native)"
    prove_all_arches
    step "packages: build, lint, contents, each arch's binary against the real endpoint, log rotation"
    package
    bash tests/packaging/check.sh "$VERSION" dist
    step "reproducible: x86_64 binary, .deb and .rpm built again elsewhere, compared byte for byte"
    repro_check
    step "Salt $SALT_E2E (the e2e venv), $SALT_LTS and $SALT_OLD: the machine id against Salt's own, and old Salt launching the agent"
    deps_e2e
    salt_id_suite
    old_salt_suite
    step "end-to-end: salt-master, salt-minion, the Saltpeter server"
    e2e_suite
    step ""
    say "./build.sh test passed in $((SECONDS / 60)) min $((SECONDS % 60)) s; by step:"
    printf '    %s\n' "${STEP_TIMES[@]}"
}
