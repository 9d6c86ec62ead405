#!/usr/bin/env bash
# Check the packages: their file lists, and that the .deb's binary, unpacked,
# runs a job against the real Saltpeter endpoint.
#   tests/packaging/check.sh VERSION DIR
set -euo pipefail
version=$1
dir=$2
top=$(cd "$(dirname "$0")/../.." && pwd)
deb="$dir/saltpeter-agent_${version}_amd64.deb"
rpm_file="$dir/saltpeter-agent-${version}-1.x86_64.rpm"
expected=(/usr/bin/sp_wrapper /var/log/sp_wrapper /usr/share/doc/saltpeter-agent/README.md
          /usr/share/doc/saltpeter-agent/LICENSE /usr/share/doc/saltpeter-agent/deploy.md)

echo "== dpkg-deb -c $deb"
deb_list=$(dpkg-deb -c "$deb")
echo "$deb_list"
echo "== rpm -qlp $rpm_file"
rpm_list=$(rpm -qlp "$rpm_file" 2>/dev/null)
echo "$rpm_list"
for path in "${expected[@]}"; do
    grep -qE "\.${path}/?\$" <<<"$deb_list" || { echo "check.sh: $path missing from the .deb" >&2; exit 1; }
    grep -qx "$path" <<<"$rpm_list" || { echo "check.sh: $path missing from the .rpm" >&2; exit 1; }
done
grep -q -- '-rwxr-xr-x root/root .* ./usr/bin/sp_wrapper$' <<<"$deb_list" || { echo "check.sh: /usr/bin/sp_wrapper is not root-owned 0755 in the .deb" >&2; exit 1; }

unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
dpkg -x "$deb" "$unpacked"
echo "== the .deb's binary, unpacked, against the real endpoint"
"$unpacked/usr/bin/sp_wrapper" --version
"$top/.venv/bin/python" "$top/tests/harness/demo.py" "$unpacked/usr/bin/sp_wrapper"
echo "packages OK"
