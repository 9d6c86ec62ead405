#!/usr/bin/env bash
# Check the packages package.sh built (./build.sh test calls this):
#   1. list both (dpkg-deb -c, rpm -qlp) and assert every expected path is in
#      both, with its mode and root ownership;
#   2. assert both carry the same binary;
#   3. unpack the .deb (dpkg -x) and run a job with the unpacked
#      usr/bin/sp_wrapper against the real Saltpeter endpoint
#      (tests/harness/demo.py: exits 0 only if the server recorded retcode 3).
#
#   tests/packaging/check.sh VERSION DIR
#
# Needs dpkg, rpm (package.sh installs it) and .venv (./build.sh deps).
set -euo pipefail

die() { echo "check.sh: FAIL: $*" >&2; exit 1; }

[ $# -eq 2 ] || { echo "usage: tests/packaging/check.sh VERSION DIR" >&2; exit 2; }
version=$1
dir=$2
top=$(cd "$(dirname "$0")/../.." && pwd)
python="$top/.venv/bin/python"
deb="$dir/saltpeter-agent_${version}_amd64.deb"
rpm_file="$dir/saltpeter-agent-${version}-1.x86_64.rpm"
[ -f "$deb" ] || die "$deb not found (run tests/packaging/package.sh $version dist/sp_wrapper $dir)"
[ -f "$rpm_file" ] || die "$rpm_file not found (run tests/packaging/package.sh $version dist/sp_wrapper $dir)"
command -v rpm >/dev/null || die "rpm is missing: apt-get install rpm"
[ -x "$python" ] || die "$python is missing: run ./build.sh deps"

# path, then its mode as ls shows it.
expected=(
    "/usr/bin/sp_wrapper -rwxr-xr-x"
    "/var/log/sp_wrapper drwxr-x---"
    "/usr/share/doc/saltpeter-agent drwxr-xr-x"
    "/usr/share/doc/saltpeter-agent/README.md -rw-r--r--"
    "/usr/share/doc/saltpeter-agent/LICENSE -rw-r--r--"
)
for doc in "$top"/docs/*.md; do
    expected+=("/usr/share/doc/saltpeter-agent/$(basename "$doc") -rw-r--r--")
done

echo "== dpkg-deb -c $deb"
deb_list=$(dpkg-deb -c "$deb") || die "dpkg-deb cannot read $deb"
echo "$deb_list"
echo "== rpm -qlp $rpm_file"
rpm_list=$(rpm -qlp "$rpm_file" 2>/dev/null) || die "rpm cannot read $rpm_file"
echo "$rpm_list"
rpm_long=$(rpm -qlvp "$rpm_file" 2>/dev/null)

for entry in "${expected[@]}"; do
    path=${entry% *}
    mode=${entry##* }
    # dpkg-deb -c: "-rwxr-xr-x root/root 803032 2025-01-01 00:00 ./usr/bin/sp_wrapper"
    line=$(awk -v p=".$path" '{ f = $NF; sub(/\/$/, "", f) } f == p' <<<"$deb_list")
    [ -n "$line" ] || die "$path is missing from the .deb"
    read -r deb_mode deb_owner _ <<<"$line"
    [ "$deb_mode" = "$mode" ] && [ "$deb_owner" = root/root ] ||
        die "$path in the .deb is $deb_mode $deb_owner, expected $mode root/root"
    # rpm -qlp: the path; rpm -qlvp: "-rwxr-xr-x 1 root root 803032 Jan 1 00:00 /usr/bin/sp_wrapper"
    grep -qxF "$path" <<<"$rpm_list" || die "$path is missing from the .rpm"
    line=$(awk -v p="$path" '$NF == p' <<<"$rpm_long")
    read -r rpm_mode _ rpm_user rpm_group _ <<<"$line"
    [ "$rpm_mode" = "$mode" ] && [ "$rpm_user:$rpm_group" = root:root ] ||
        die "$path in the .rpm is $rpm_mode $rpm_user:$rpm_group, expected $mode root:root"
done
grep -q '/usr/local' <<<"$deb_list$rpm_list" && die "a package installs under /usr/local"
echo "== every expected path is in both packages, root-owned, with its mode"

rpm -qp --requires "$rpm_file" 2>/dev/null | grep -v '^rpmlib(' && die "the .rpm declares dependencies"
dpkg-deb -f "$deb" Depends Pre-Depends | grep -q . && die "the .deb declares dependencies"
echo "== no dependencies: $(rpm -qp --qf '%{NAME} %{VERSION}-%{RELEASE} %{ARCH} license=%{LICENSE} payload=%{PAYLOADCOMPRESSOR}' "$rpm_file" 2>/dev/null)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
unpacked="$work/root"
dpkg -x "$deb" "$unpacked"
binary="$unpacked/usr/bin/sp_wrapper"
deb_sum=$(sha256sum <"$binary" | cut -d' ' -f1)
rpm_sum=$(rpm -qp --dump "$rpm_file" 2>/dev/null | awk '$1 == "/usr/bin/sp_wrapper" { print $4 }')
[ "$deb_sum" = "$rpm_sum" ] || die "the packages carry different binaries (deb $deb_sum, rpm $rpm_sum)"
echo "== the same binary in both: sha256 $deb_sum"
file "$binary" 2>/dev/null | grep -q 'statically linked' || die "the packaged binary is not statically linked"

echo "== the .deb's binary, unpacked, against the real endpoint"
"$binary" --version
[ "$("$binary" --version)" = "sp_wrapper $version" ] || die "the packaged binary is not version $version"
# demo.py's scratch directory (log, lock) goes under $work too.
mkdir -p "$work/tmp"
TMPDIR="$work/tmp" "$python" "$top/tests/harness/demo.py" "$binary" || die "the unpacked binary did not run the demo job (retcode 3 expected)"
echo "check.sh: packages OK ($deb, $rpm_file)"
