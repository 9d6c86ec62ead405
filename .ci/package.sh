# shellcheck shell=bash
# .ci/package.sh: `./build.sh package`, a .deb and an .rpm for each arch
# built (by packaging/package.sh), and `./build.sh repro`, the binaries and
# packages built a second time elsewhere and compared byte for byte.

# Packaging (a .deb and an .rpm for every arch in dist/) lives in
# packaging/package.sh (repro_check runs it again). It packages what is
# built: dist/sp_wrapper (x86_64, refreshed here) and dist/<triple>/sp_wrapper
# from build-all. Arches not built are skipped, each named with the command
# that builds it: `./build.sh build-all && ./build.sh package` makes them all.
package() {
    deps_packaging
    build
    rm -f dist/saltpeter-agent_*.deb dist/saltpeter-agent-*.rpm
    bash packaging/package.sh "$VERSION" dist dist
    say "packages (copy these, not dist/ itself, to a repository or the Salt file server; docs/deploy.md):"
    printf '    %s\n' dist/saltpeter-agent_*.deb dist/saltpeter-agent-*.rpm
}

# Reproducible builds (issue 25; docs/packaging.md, "Reproducible builds").
# repro_check: after `package`, build the x86_64 binary and its .deb and .rpm
# a second time from a copy of this checkout at another path, with another
# HOME and CARGO_HOME (a copy of cargo's download cache, unpacked afresh) and
# the same toolchain without rust-src (hard links, lib/rustlib/src left
# out), and compare them with dist/'s byte for byte. The copy is the
# checkout's files as they are (uncommitted changes too) without .git, as a
# source tarball would be: it is given the commit's time as
# SOURCE_DATE_EPOCH, which package.sh reads from git here. On a mismatch the
# copy is kept for diffoscope. `repro_check ARCH...` (./build.sh repro ARCH...)
# does the same for those arches' binaries and packages, built in dist/
# first; not armv7, whose std is built from rust-src.
repro_check() {
    local other clone sysroot rustup_home name epoch status=0 compared=() started=$SECONDS
    # This machine's HOME, which the binaries must not name (the second
    # build, in a subshell, has another).
    local builder_home=$HOME
    local triples=() files=() arch triple
    for arch in "${@:-x86_64}"; do
        triple=$(triple_of "$arch")
        [ "$triple" != "$ARMV7" ] || { echo "build.sh: repro: armv7's std is built from rust-src, which the second build leaves out" >&2; exit 2; }
        triples+=("$triple")
        arch_fields "$triple"
        files+=("$(arch_binary dist "$triple")" "dist/saltpeter-agent_${VERSION}_$deb_arch.deb" "dist/saltpeter-agent-${VERSION}-1.$rpm_arch.rpm")
    done
    epoch=$(git log -1 --format=%ct)
    # Under target/: on the checkout's filesystem, where hard links to the
    # toolchain are likelier to work than on a tmpfs /tmp (else it is copied).
    mkdir -p target
    other=$(mktemp -d "$PWD/target/repro.XXXXXX")
    clone="$other/elsewhere/saltpeter-agent"
    say "reproducibility: a second build in $clone (HOME=$other/home, toolchain without rust-src)"
    mkdir -p "$clone"
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' name; do [ ! -e "$name" ] || printf '%s\0' "$name"; done |
        xargs -0 cp -P --parents -t "$clone"
    mkdir -p "$other/home/.cargo/registry"
    cp -r "${CARGO_HOME:-$HOME/.cargo}"/registry/{index,cache} "$other/home/.cargo/registry/"
    sysroot=$(rustc --print sysroot)
    mkdir -p "$other/toolchain/lib"
    for name in "$sysroot"/* "$sysroot"/lib/* "$sysroot"/lib/rustlib/*; do
        case "$name" in
            "$sysroot/lib" | "$sysroot/lib/rustlib" | "$sysroot/lib/rustlib/src" | "$sysroot/share") continue ;;
        esac
        mkdir -p "$(dirname "$other/toolchain/${name#"$sysroot"/}")"
        cp -al "$name" "$other/toolchain/${name#"$sysroot"/}" 2>/dev/null ||
            cp -a "$name" "$other/toolchain/${name#"$sysroot"/}"
    done
    rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
    (
        cd "$clone" || exit 1
        export HOME="$other/home" CARGO_HOME="$other/home/.cargo" RUSTUP_HOME="$rustup_home" \
            PATH="$other/toolchain/bin:$PATH" SOURCE_DATE_EPOCH="$epoch"
        unset CARGO_TARGET_DIR RUSTFLAGS CARGO_BUILD_RUSTFLAGS RUSTUP_TOOLCHAIN
        [ ! -d "$(rustc --print sysroot)/lib/rustlib/src" ] || { echo "build.sh: the copied toolchain has rust-src" >&2; exit 1; }
        for triple in "${triples[@]}"; do
            cargo build --release --locked --quiet --target "$triple" \
                --config "$(remap_paths "$triple")" --config "$(shipped_link_flags "$triple")"
            mkdir -p "dist/$triple"
            cp "target/$triple/release/sp_wrapper" "dist/$triple/sp_wrapper"
            [ "$triple" != "$TARGET" ] || cp "target/$triple/release/sp_wrapper" dist/sp_wrapper
        done
        # (Only the arches asked for are built here: package.sh's notes on
        # the others are not news.)
        if ! bash packaging/package.sh "$VERSION" dist dist >/dev/null 2>"$other/package.err"; then
            cat "$other/package.err" >&2
            exit 1
        fi
        grep -v '^package.sh: no binary for ' "$other/package.err" >&2 || true
    )
    for name in "${files[@]}"; do
        if cmp -s "$name" "$clone/$name"; then
            compared+=("$name ($(stat -c %s "$name") B, sha256 $(sha256sum "$name" | cut -c1-16)...)")
        else
            echo "build.sh: FAIL: $name differs from the second build's $clone/$name ($(cmp "$name" "$clone/$name" 2>&1 | head -n1)); diffoscope shows how" >&2
            status=1
        fi
        case "$name" in
            *.deb | *.rpm) ;;
            *)
                if strings -n 6 "$name" | grep -E "$builder_home|$PWD|/registry/src/|/lib/rustlib/src/" >&2; then
                    echo "build.sh: FAIL: $name names the build machine's paths above" >&2
                    status=1
                fi
                ;;
        esac
    done
    if [ $status -ne 0 ]; then
        echo "build.sh: the second build is kept in $other" >&2
        return 1
    fi
    rm -rf "$other"
    say "reproducible: ${#compared[@]} files identical from two checkouts, homes and toolchains ($((SECONDS - started)) s):"
    printf '    %s\n' "${compared[@]}"
}
