# shellcheck shell=bash
# .ci/binaries.sh: `./build.sh build [ARCH]`, `build-all` and `build-local`:
# the static release binaries, one per row of packaging/arches.sh, each
# checked (check_static), with armv7's std built from rust-src where rustup
# has no prebuilt one.

# The bound on each shipped binary's size (check_static; docs/packaging.md,
# "Size").
MAX_SIZE=$((1024 * 1024))

build() {
    deps_rust
    build_arch "$TARGET"
}

# Every arch of packaging/arches.sh (docs/packaging.md, "The binaries").
# Output: dist/<triple>/sp_wrapper, and dist/sp_wrapper for x86_64 as ever.

# The one arch with code of its own: rustup may have no prebuilt std for it,
# and then std is built from rust-src, linked against Debian's musl-dev:armhf
# and a libunwind built here with clang (armv7_prebuilt, build_armv7,
# armv7_unit_tests; not reproducible by repro_check).
ARMV7=armv7-unknown-linux-musleabihf
# Debian's musl-dev:armhf (multiarch).
ARMV7_MUSL=/usr/lib/arm-linux-musleabihf
ARMV7_UNWIND=target/armv7-libunwind
# Set by build_armv7 when it cannot build, for the caller to print.
SKIP_REASON=

# triple_of ARCH: the triple of the row of packaging/arches.sh whose short
# name (the triple's first word), Debian name or triple ARCH is.
triple_of() {
    local triple deb_arch rpm_arch qemu suites kernel_floor elf_machine names=()
    for triple in $(arch_triples); do
        arch_fields "$triple"
        if [ "$1" = "${triple%%-*}" ] || [ "$1" = "$deb_arch" ] || [ "$1" = "$triple" ]; then
            echo "$triple"
            return 0
        fi
        names+=("${triple%%-*}")
    done
    echo "build.sh: unknown arch '$1' (${names[*]}: packaging/arches.sh)" >&2
    exit 2
}

# build_arch TRIPLE: build, install to dist/<triple>/sp_wrapper (and
# dist/sp_wrapper for x86_64), check. Returns 1 with SKIP_REASON set when
# armv7's toolchain is missing; exits on any other failure.
# remap_paths TRIPLE: a --config that maps the build machine's source
# directories, which the binary names in its panic locations, to fixed
# names: the cargo registry to /cargo, the toolchain's library sources
# (rust-src, which rustc prefers once installed) to /rustc. The binary
# then says nothing of where it was built, and 48 long paths shrink
# (x86_64: 1,039,592 -> 1,037,608 bytes; docs/packaging.md, "Size").
remap_paths() {
    local index flags
    # The registry's source directory exists only once a crate has been
    # unpacked into it: on a fresh CARGO_HOME the glob below would match
    # nothing and the first build would name it in full. cargo fetch unpacks
    # (offline when everything is in cargo's cache already).
    cargo fetch --locked --quiet --target "$1" >&2
    # Each registry's directory (index.crates.io-<hash of its URL>), so a
    # crate's files are /cargo/<crate>-<version>/...
    for index in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/; do
        flags+="'--remap-path-prefix=${index%/}=/cargo',"
    done
    # rust-src as the prebuilt std names its own sources: /rustc/<commit>.
    printf "target.%s.rustflags=[%s'--remap-path-prefix=%s/lib/rustlib/src/rust=/rustc/%s']" \
        "$1" "$flags" "$(rustc --print sysroot)" "$(rustc -vV | sed -n 's/^commit-hash: //p')"
}

# shipped_link_flags TRIPLE: a --config that links the shipped binary
# without its DWARF unwind tables (.eh_frame: -67 KB on x86_64), by the
# linker script .cargo/no-eh-frame.ld (relative: the link runs in the
# checkout, whose path must not matter). Only here, not in
# .cargo/config.toml: unit tests built for a target unwind (the harness
# reports a failing test by catching its panic).
shipped_link_flags() {
    printf "target.%s.rustflags=['-C','link-arg=-T.cargo/no-eh-frame.ld']" "$1"
}

build_arch() {
    local triple=$1 built
    mkdir -p "dist/$triple"
    # Never leave an older binary standing for an arch that did not build.
    rm -f "dist/$triple/sp_wrapper"
    if [ "$triple" = "$ARMV7" ] && ! armv7_prebuilt; then
        build_armv7 || return 1
    else
        [ "$triple" = "$TARGET" ] || deps_rust "$triple"
        say "building the static release binary ($triple)"
        cargo build --release --locked --target "$triple" --config "$(remap_paths "$triple")" --config "$(shipped_link_flags "$triple")"
    fi
    built="target/$triple/release/sp_wrapper"
    # Install by rename: a daemon still running the old file (tests leave some
    # finishing their delivery) makes a plain cp fail with "Text file busy".
    cp "$built" "dist/$triple/sp_wrapper.new"
    mv -f "dist/$triple/sp_wrapper.new" "dist/$triple/sp_wrapper"
    check_static "dist/$triple/sp_wrapper" "$triple"
    if [ "$triple" = "$TARGET" ]; then
        cp "$built" dist/sp_wrapper.new
        mv -f dist/sp_wrapper.new dist/sp_wrapper
        check_static dist/sp_wrapper "$triple"
    fi
}

# check_static FILE TRIPLE: the right machine, statically linked, a plain
# ET_EXEC with no program interpreter, and under MAX_SIZE.
check_static() {
    # shellcheck disable=SC2034 # arch_fields' outputs, local to this function; not all are read
    local bin=$1 triple=$2 says size deb_arch rpm_arch qemu suites kernel_floor elf_machine
    arch_fields "$triple"
    says=$(file -b "$bin")
    static_fail() {
        echo "build.sh: $bin: $*" >&2
        exit 1
    }
    [[ "$says" == "ELF "??"-bit LSB executable, $elf_machine"* ]] || static_fail "not a $triple executable: $says"
    [[ "$says" == *"statically linked"* ]] || static_fail "not statically linked: $says"
    LC_ALL=C readelf -h "$bin" | grep -Eq 'Type:[[:space:]]+EXEC' || static_fail "not a plain static executable (ET_EXEC)"
    if LC_ALL=C readelf -l "$bin" | grep -q INTERP; then static_fail "has a program interpreter (PT_INTERP)"; fi
    size=$(stat -c %s "$bin")
    [ "$size" -le "$MAX_SIZE" ] || static_fail "$size bytes, over the $MAX_SIZE-byte bound"
    say "$bin: $size bytes ($((size / 1024)) KiB; bound $((MAX_SIZE / 1024)) KiB), static ET_EXEC, no PT_INTERP: $says"
}

# armv7_prebuilt: rustup lists armv7-unknown-linux-musleabihf, so try its
# prebuilt std first (once per run); where its download fails (404 on the
# Rust dist server for this toolchain, seen here), build std from source.
ARMV7_PREBUILT=
armv7_prebuilt() {
    if [ -z "$ARMV7_PREBUILT" ]; then
        ARMV7_PREBUILT=no
        if rustup target list --installed 2>/dev/null | grep -qx "$ARMV7" ||
            rustup target add "$ARMV7" >/dev/null 2>&1; then
            ARMV7_PREBUILT=yes
        else
            say "rustup has no prebuilt std for $ARMV7 here (rustup target add failed): std is built from source"
        fi
    fi
    [ "$ARMV7_PREBUILT" = yes ]
}

# armv7 without rustup's prebuilt std (armv7_prebuilt failed), so
# std is built from its sources (-Zbuild-std; RUSTC_BOOTSTRAP=1 lets the
# stable compiler accept it), linked by rust-lld against Debian's
# musl-dev:armhf (crt objects and libc.a, musl 1.2.3) and LLVM's libunwind,
# which std's unwind crate links on musl and which we compile from rust-src
# with clang (std is built panic=abort, but its backtrace code still links
# the unwinder).
build_armv7() {
    local sysroot src_unwind resource flags f
    sysroot=$(rustc --print sysroot)
    src_unwind="$sysroot/lib/rustlib/src/rust/src/llvm-project/libunwind"
    if [ ! -d "$sysroot/lib/rustlib/src/rust/library/std" ]; then
        SKIP_REASON="no std sources (rustup component add rust-src)"
    elif [ ! -f "$ARMV7_MUSL/libc.a" ]; then
        SKIP_REASON="no musl libc for armhf in $ARMV7_MUSL (dpkg --add-architecture armhf; apt-get install musl-dev:armhf)"
    elif ! command -v clang >/dev/null || ! command -v llvm-ar >/dev/null; then
        SKIP_REASON="no clang/llvm-ar to build libunwind for armv7 (apt-get install clang llvm)"
    elif [ ! -d "$src_unwind/src" ]; then
        SKIP_REASON="rust-src has no llvm-project/libunwind"
    fi
    [ -z "$SKIP_REASON" ] || return 1
    resource=$(clang -print-resource-dir)
    # -ffile-prefix-map: libunwind's assertions name their source files;
    # as rust-src in remap_paths, /rustc/<commit>, not the builder's home.
    flags=(--target=armv7-unknown-linux-musleabihf -march=armv7-a -mfpu=vfpv3-d16 -mfloat-abi=hard
        -O2 -nostdinc -isystem "$resource/include" -isystem /usr/include/arm-linux-musleabihf
        -I "$src_unwind/include" -funwind-tables -fstrict-aliasing -fvisibility=hidden
        -D_LIBUNWIND_DISABLE_VISIBILITY_ANNOTATIONS -D_LIBUNWIND_IS_NATIVE_ONLY
        "-ffile-prefix-map=$sysroot/lib/rustlib/src/rust=/rustc/$(rustc -vV | sed -n 's/^commit-hash: //p')")
    # Built once per set of flags (a change of them, or of the toolchain, rebuilds it).
    if [ ! -f "$ARMV7_UNWIND/libunwind.a" ] || [ "$(cat "$ARMV7_UNWIND/flags" 2>/dev/null)" != "${flags[*]}" ]; then
        say "building LLVM libunwind for $ARMV7 (clang, from rust-src)"
        rm -rf "$ARMV7_UNWIND.tmp" && mkdir -p "$ARMV7_UNWIND.tmp"
        for f in UnwindLevel1.c UnwindLevel1-gcc-ext.c Unwind-sjlj.c; do
            clang "${flags[@]}" -std=c99 -c "$src_unwind/src/$f" -o "$ARMV7_UNWIND.tmp/${f%.*}.o" || SKIP_REASON="clang could not compile libunwind's $f for armv7"
        done
        for f in UnwindRegistersRestore.S UnwindRegistersSave.S; do
            clang "${flags[@]}" -c "$src_unwind/src/$f" -o "$ARMV7_UNWIND.tmp/${f%.*}.o" || SKIP_REASON="clang could not assemble libunwind's $f for armv7"
        done
        for f in libunwind.cpp Unwind-EHABI.cpp Unwind-seh.cpp; do
            clang++ "${flags[@]}" -std=c++17 -nostdinc++ -fno-exceptions -fno-rtti -c "$src_unwind/src/$f" -o "$ARMV7_UNWIND.tmp/${f%.*}.o" || SKIP_REASON="clang could not compile libunwind's $f for armv7"
        done
        [ -z "$SKIP_REASON" ] || return 1
        llvm-ar rcs "$ARMV7_UNWIND.tmp/libunwind.a" "$ARMV7_UNWIND.tmp"/*.o
        printf '%s' "${flags[*]}" >"$ARMV7_UNWIND.tmp/flags"
        rm -rf "$ARMV7_UNWIND" && mv "$ARMV7_UNWIND.tmp" "$ARMV7_UNWIND"
    fi
    say "building the static release binary ($ARMV7, std from source)"
    if ! armv7_cargo build --release --locked --target "$ARMV7" --config "$(remap_paths "$ARMV7")" --config "$(shipped_link_flags "$ARMV7")"; then
        SKIP_REASON="cargo build -Zbuild-std failed (output above)"
        return 1
    fi
}

# cargo with armv7's std-from-source flags (build and test share them).
armv7_cargo() {
    local unwind
    unwind="$PWD/$ARMV7_UNWIND"
    RUSTC_BOOTSTRAP=1 cargo "$@" -Zbuild-std=std,panic_abort \
        --config "target.$ARMV7.rustflags=['-C','link-self-contained=no','-L','native=$ARMV7_MUSL','-L','native=$unwind','-C','link-arg=$ARMV7_MUSL/crt1.o','-C','link-arg=$ARMV7_MUSL/crti.o','-C','link-arg=$ARMV7_MUSL/crtn.o']"
}

# Builds every arch of packaging/arches.sh, in its order; BUILT_ARCHES lists
# those that built. Only armv7 may be skipped, and only with its reason printed.
BUILT_ARCHES=()
build_all() {
    local triple summary=()
    deps_rust_arches
    for triple in $(arch_triples); do
        SKIP_REASON=
        if build_arch "$triple"; then
            BUILT_ARCHES+=("$triple")
            summary+=("$(printf '%-32s %8s bytes  dist/%s/sp_wrapper' "$triple" "$(stat -c %s "dist/$triple/sp_wrapper")" "$triple")")
        else
            say "SKIPPED $triple: $SKIP_REASON"
            summary+=("$(printf '%-32s SKIPPED (%s)' "$triple" "$SKIP_REASON")")
        fi
    done
    say "build-all:"
    printf '    %s\n' "${summary[@]}"
}

build_local() {
    cargo build --release --locked
    mkdir -p dist
    cp target/release/sp_wrapper dist/sp_wrapper-local.new
    mv -f dist/sp_wrapper-local.new dist/sp_wrapper-local
    say "dist/sp_wrapper-local"
}
