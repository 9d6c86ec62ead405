#!/usr/bin/env bash
# tests/packaging/check.sh: check the packages packaging/package.sh built
# (./build.sh test calls this). For every arch of packaging/arches.sh whose
# binary is in DIR (an arch not built is reported as SKIPPED):
#   1. the .deb and the .rpm exist and their arch fields are that arch's
#      names (Architecture: arm64, rpm %{ARCH} aarch64, ...);
#   2. their file lists: every expected path, root-owned, with its mode, and
#      nothing else; the logrotate file is a conffile / %config; the only
#      relation is to logrotate; the changelog's top entry is VERSION; the
#      .deb's one maintainer script is the postinst that sets the log
#      directory's mode;
#   3. both carry the binary of DIR (same sha256), static, for that machine;
#   4. lintian (.deb) and rpmlint (.rpm) report no error (warnings are
#      printed; docs/packaging.md lists the ones we keep and why);
#   5. the man page says everything the packaged binary's --help says;
#   6. the binary unpacked from the .deb (under qemu-user when not native)
#      runs a job against the real Saltpeter endpoint, and the server
#      recorded its exit code, output and version (run_job.py);
# then, once: logrotate rotates the logs of running agents with the packaged
# configuration and loses nothing, and weeks of rotations keep the logs and
# left-out files bounded (logrotate_test.py), and the Salt state of
# docs/deploy.md renders for every arch (salt_state_test.py).
#
#   tests/packaging/check.sh VERSION DIR
#
# Needs what ./build.sh deps installs (dpkg, rpm, lintian, rpmlint, groff,
# logrotate, qemu-user, .venv with the endpoint, jinja2 and PyYAML).
set -euo pipefail

die() { echo "check.sh: FAIL: $*" >&2; exit 1; }

[ $# -eq 2 ] || { echo "usage: tests/packaging/check.sh VERSION DIR" >&2; exit 2; }
version=$1
dir=$(realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
# shellcheck source=packaging/arches.sh
. "$top/packaging/arches.sh"
python="$top/.venv/bin/python"
[ -x "$python" ] || die "$python is missing: run ./build.sh deps"
for tool in dpkg-deb rpm lintian rpmlint groff logrotate; do
    command -v "$tool" >/dev/null || die "$tool is missing: run ./build.sh deps"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
results=()

# Path, then its mode as ls shows it; each format adds its own.
common_paths=(
    "/usr/bin/sp_wrapper -rwxr-xr-x"
    "/usr/libexec/saltpeter-agent/reopen-logs -rwxr-xr-x"
    "/etc/logrotate.d/saltpeter-agent -rw-r--r--"
    "/usr/share/man/man1/sp_wrapper.1.gz -rw-r--r--"
    "/var/log/sp_wrapper drwxr-x---"
    "/usr/share/doc/saltpeter-agent drwxr-xr-x"
    "/usr/share/doc/saltpeter-agent/README.md -rw-r--r--"
)
for doc in "$top"/docs/*.md; do
    common_paths+=("/usr/share/doc/saltpeter-agent/$(basename "$doc") -rw-r--r--")
done
deb_paths=("${common_paths[@]}"
    "/usr/share/doc/saltpeter-agent/copyright -rw-r--r--"
    "/usr/share/doc/saltpeter-agent/changelog.gz -rw-r--r--"
    "/usr/share/lintian/overrides/saltpeter-agent -rw-r--r--"
)
rpm_paths=("${common_paths[@]}"
    "/usr/share/licenses/saltpeter-agent/LICENSE -rw-r--r--"
)

# check_listing FORMAT LONG_LISTING EXPECTED...: every expected path with its
# mode and root ownership, and no regular file that is not expected. The
# listing is normalised to "mode owner path" lines by the caller.
check_listing() {
    local format=$1 listing=$2 entry path mode line
    shift 2
    for entry in "$@"; do
        path=${entry% *}
        mode=${entry##* }
        line=$(awk -v p="$path" '$3 == p' <<<"$listing")
        [ -n "$line" ] || die "$path is missing from the $format"
        [ "$line" = "$mode root:root $path" ] || die "$path in the $format is '$line', expected '$mode root:root $path'"
    done
    local expected_files
    expected_files=$(printf '%s\n' "$@" | awk '$2 !~ /^d/ { print $1 }' | sort)
    local extra
    extra=$(awk '$1 !~ /^d/ { print $3 }' <<<"$listing" | sort | comm -23 - <(echo "$expected_files"))
    [ -z "$extra" ] || die "the $format holds files nobody expects: $extra"
}

check_arch() {
    local triple=$1 binary=$2
    arch_fields "$triple"
    local deb="$dir/saltpeter-agent_${version}_${deb_arch}.deb"
    local rpm_file="$dir/saltpeter-agent-${version}-1.${rpm_arch}.rpm"
    echo "== $triple: $(basename "$deb"), $(basename "$rpm_file")"
    [ -f "$deb" ] || die "$deb not found, though $binary exists (run ./build.sh package)"
    [ -f "$rpm_file" ] || die "$rpm_file not found, though $binary exists (run ./build.sh package)"

    # 1. Arch fields, name, version.
    local field
    field=$(dpkg-deb -f "$deb" Package Version Architecture | tr '\n' ' ')
    [ "$field" = "Package: saltpeter-agent Version: $version Architecture: $deb_arch " ] ||
        die "$deb says '$field', expected saltpeter-agent $version $deb_arch"
    field=$(rpm -qp --qf '%{NAME} %{VERSION}-%{RELEASE} %{ARCH}' "$rpm_file" 2>/dev/null)
    [ "$field" = "saltpeter-agent $version-1 $rpm_arch" ] ||
        die "$rpm_file says '$field', expected saltpeter-agent $version-1 $rpm_arch"

    # 2. Contents. dpkg-deb -c: "-rwxr-xr-x root/root 803032 2026-11-23 12:00 ./usr/bin/sp_wrapper";
    # rpm -qlvp: "-rwxr-xr-x 1 root root 803032 Nov 23 12:00 /usr/bin/sp_wrapper".
    local deb_listing rpm_listing
    deb_listing=$(dpkg-deb -c "$deb" | awk '{ p = $NF; sub(/^\./, "", p); sub(/\/$/, "", p); sub(/\//, ":", $2); if (p != "") print $1, $2, p }')
    rpm_listing=$(rpm -qlvp "$rpm_file" 2>/dev/null | awk '{ print $1, $3 ":" $4, $NF }')
    check_listing .deb "$deb_listing" "${deb_paths[@]}"
    check_listing .rpm "$rpm_listing" "${rpm_paths[@]}"
    grep -q ' /usr/local' <<<"$deb_listing$rpm_listing" && die "a package installs under /usr/local"
    [ "$(dpkg-deb -f "$deb" Depends Pre-Depends Recommends)" = "Recommends: logrotate" ] ||
        die "the .deb's relations are '$(dpkg-deb -f "$deb" Depends Pre-Depends Recommends)', expected only Recommends: logrotate"
    [ "$(rpm -qp --requires "$rpm_file" 2>/dev/null | grep -v '^rpmlib(')" = logrotate ] ||
        die "the .rpm requires '$(rpm -qp --requires "$rpm_file" 2>/dev/null | tr '\n' ' ')', expected only logrotate"
    # (Whole outputs into variables first: with pipefail, grep -q or head
    # closing a pipe early would fail the producer.)
    local text
    text=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
    grep -qx /etc/logrotate.d/saltpeter-agent <<<"$text" ||
        die "/etc/logrotate.d/saltpeter-agent is not a conffile of the .deb"
    # The only maintainer script: the log directory's mode on hosts that had
    # it before (packaging/postinst; tests/e2e/test_deploy.py runs it).
    text=$(dpkg-deb --ctrl-tarfile "$deb" | tar -t | sort | tr '\n' ' ')
    [ "$text" = "./ ./conffiles ./control ./md5sums ./postinst " ] ||
        die "the .deb's control members are '$text', expected conffiles, control, md5sums, postinst"
    text=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./postinst)
    grep -q '^    chmod 0750 /var/log/sp_wrapper$' <<<"$text" || die "the .deb's postinst does not set /var/log/sp_wrapper to 0750"
    text=$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm_file" 2>/dev/null)
    grep -qx 'cn /etc/logrotate.d/saltpeter-agent' <<<"$text" ||
        die "/etc/logrotate.d/saltpeter-agent is not %config(noreplace) in the .rpm"
    local unpacked="$work/$deb_arch"
    dpkg -x "$deb" "$unpacked"
    text=$(zcat "$unpacked/usr/share/doc/saltpeter-agent/changelog.gz")
    [[ ${text%%$'\n'*} == "saltpeter-agent ($version) "* ]] ||
        die "the .deb's changelog does not start with $version"
    text=$(rpm -qp --changelog "$rpm_file" 2>/dev/null)
    [[ ${text%%$'\n'*} == *" - $version-1" ]] ||
        die "the .rpm's %changelog does not start with $version-1"
    grep -qx 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/' \
        "$unpacked/usr/share/doc/saltpeter-agent/copyright" || die "the .deb's copyright is not DEP-5"
    echo "   arch fields, contents (modes, conffile, changelog $version, DEP-5 copyright), relations: OK"

    # 3. The binary of DIR, in both.
    local packaged="$unpacked/usr/bin/sp_wrapper" want deb_sum rpm_sum
    want=$(sha256sum <"$binary" | cut -d' ' -f1)
    deb_sum=$(sha256sum <"$packaged" | cut -d' ' -f1)
    rpm_sum=$(rpm -qp --dump "$rpm_file" 2>/dev/null | awk '$1 == "/usr/bin/sp_wrapper" { print $4 }')
    if [ "$deb_sum" != "$want" ] || [ "$rpm_sum" != "$want" ]; then
        die "the packages do not carry $binary (sha256 $want; deb $deb_sum, rpm $rpm_sum)"
    fi
    local described
    described=$(file -b "$packaged")
    [[ $described == *"$elf_machine"*"statically linked"* ]] ||
        die "the packaged binary is not a static $elf_machine executable: $described"
    echo "   binary: $elf_machine, static, sha256 $want in both"

    # 4. Lint: errors fail, warnings are shown.
    local lint errors
    lint=$(lintian --pedantic "$deb" 2>&1 | grep -v "^running with root privileges") || true
    errors=$(grep -c '^E:' <<<"$lint" || true)
    if [ -n "$lint" ]; then echo "   lintian: ${lint//$'\n'/$'\n'   lintian: }"; fi
    [ "$errors" -eq 0 ] || die "lintian reports $errors error(s) for $deb"
    lint=$(rpmlint -c "$top/packaging/rpmlint.toml" "$rpm_file" 2>&1) || true
    grep -E '^saltpeter-agent' <<<"$lint" | sed 's/^/   rpmlint: /' || true
    local summary
    summary=$(grep -E '[0-9]+ errors?, [0-9]+ warnings?' <<<"$lint") || die "rpmlint gave no summary for $rpm_file: $lint"
    echo "   rpmlint: ${summary# }"
    [[ $summary =~ (^|[^0-9])0\ errors ]] || die "rpmlint reports errors for $rpm_file"

    # 5. The man page against this binary's --help (under qemu when not native).
    local runner help
    runner=$(arch_runner "$triple") || die "cannot run the $triple binary here"
    # The rotation test needs daemons named sp_wrapper (not qemu-*).
    [ -n "$runner" ] || [ -n "$native_unpacked" ] || native_unpacked=$unpacked
    help=$($runner "$packaged" --help) || die "$packaged --help failed"
    zcat "$unpacked/usr/share/man/man1/sp_wrapper.1.gz" | groff -man -Tascii -rLL=1000n -P-cbou 2>/dev/null >"$work/man.txt"
    printf '%s\n' "$help" >"$work/help.txt"
    "$python" - "$work/help.txt" "$work/man.txt" <<'PY' || die "sp_wrapper(1) does not say what --help says"
import sys
# Compare with whitespace collapsed: the man page reflows, never rewords.
words = lambda text: ' '.join(text.split())
help_lines = open(sys.argv[1]).read().splitlines()
man = words(open(sys.argv[2]).read())
missing = [line for line in help_lines if line.strip() and words(line) not in man]
for line in missing:
    print('   --help line not in the man page: %r' % line)
sys.exit(1 if missing else 0)
PY
    echo "   man page: all $(grep -c . "$work/help.txt") lines of --help are in sp_wrapper(1)"

    # 6. The packaged binary against the real endpoint.
    mkdir -p "$work/tmp"
    TMPDIR="$work/tmp" "$python" "$here/run_job.py" "$version" "$packaged" ${runner:+"$runner"} ||
        die "the $deb_arch package's binary${runner:+ (under $runner)} did not run the job as expected"
    results+=("$deb_arch/$rpm_arch: OK (deb $(stat -c %s "$deb") B, rpm $(stat -c %s "$rpm_file") B${runner:+, ran under $runner})")
}

checked=0
native_unpacked=
for row in "${PACKAGING_ARCHES[@]}"; do
    read -r triple _ <<<"$row"
    arch_fields "$triple"
    binary=$(arch_binary "$dir" "$triple")
    if [ -z "$binary" ]; then
        results+=("$deb_arch/$rpm_arch: SKIPPED (no $triple binary in $dir: not built)")
        continue
    fi
    check_arch "$triple" "$binary"
    checked=$((checked + 1))
done
[ "$checked" -gt 0 ] || die "no arch was built in $dir: nothing to check"

# Log rotation, with the package's own logrotate file and helper (the same
# files in every arch), driving agents of this host's arch.
if [ -n "$native_unpacked" ]; then
    echo "== log rotation under load (logrotate_test.py)"
    TMPDIR="$work/tmp" "$python" "$here/logrotate_test.py" "$native_unpacked" ||
        die "log rotation lost or duplicated lines, or let files pile up (logrotate_test.py)"
    results+=("logrotate: nothing lost; 3 weeks of daily rotations with logs and left-out files bounded (logrotate_test.py)")
else
    results+=("logrotate: SKIPPED (no package of this host's arch, $(uname -m), was built)")
fi

echo "== the Salt state of docs/deploy.md (salt_state_test.py)"
"$python" "$here/salt_state_test.py" "$top/docs/deploy.md" "$version" "$dir" ||
    die "the Salt state in docs/deploy.md does not render to the packages built"
results+=("Salt state (docs/deploy.md): renders for every osarch")

echo "== check.sh: summary"
printf '   %s\n' "${results[@]}"
