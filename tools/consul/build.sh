#!/usr/bin/env bash
# build.sh builds the Consul agent used by the registry-consul tests into
# <repo>/.cache/bin/consul, unless a binary is already there.
#
# The version is pinned by this directory's go.mod (github.com/hashicorp/consul
# v1.14.11). The build takes several minutes on a small machine, so CI keeps
# <repo>/.cache between runs. Concurrent callers are serialised with flock and
# the binary is moved into place atomically, so a half-written file is never
# seen. Set CONSUL_REBUILD=1 to build even if the binary exists.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin_dir="$repo/.cache/bin"
out="$bin_dir/consul"

mkdir -p "$bin_dir"
exec 9>"$bin_dir/.consul.lock"
if ! flock -w 1800 9; then
	echo "tools/consul/build.sh: timed out waiting for another build ($bin_dir/.consul.lock)" >&2
	exit 1
fi

if [[ -x "$out" && "${CONSUL_REBUILD:-}" != 1 ]]; then
	echo "tools/consul/build.sh: $out already present: $("$out" version | head -n1)"
	exit 0
fi

echo "tools/consul/build.sh: building consul $(grep -E '^\s*github.com/hashicorp/consul v' "$here/go.mod" | awk '{print $2}') into $out (takes several minutes)"
start=$(date +%s)
tmp="$(mktemp "$bin_dir/.consul.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
(cd "$here" && GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$tmp" github.com/hashicorp/consul)
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "tools/consul/build.sh: built $("$out" version | head -n1) in $(( $(date +%s) - start ))s"
