#!/usr/bin/env bash
# build.sh builds the Jaeger binary used by the tracing e2e tests into
# <repo>/.cache/bin/jaeger, unless a binary is already there.
#
# The version is pinned by this directory's go.mod (github.com/jaegertracing/jaeger
# v1.76.0, whose cmd/jaeger is the OpenTelemetry-collector-based Jaeger v2 binary).
# The build takes several minutes on a small machine, so CI keeps <repo>/.cache
# between runs. Concurrent callers are serialised with flock and the binary is
# moved into place atomically, so a half-written file is never seen. Set
# JAEGER_REBUILD=1 to build even if the binary exists.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin_dir="$repo/.cache/bin"
out="$bin_dir/jaeger"

mkdir -p "$bin_dir"
exec 9>"$bin_dir/.jaeger.lock"
if ! flock -w 1800 9; then
	echo "tools/jaeger/build.sh: timed out waiting for another build ($bin_dir/.jaeger.lock)" >&2
	exit 1
fi

version() { # the version that `jaeger version` reports (set at build time below)
	"$1" version 2>/dev/null | grep -o '"gitVersion": *"[^"]*"' | head -n1 | cut -d'"' -f4 || true
}

if [[ -x "$out" && "${JAEGER_REBUILD:-}" != 1 ]]; then
	echo "tools/jaeger/build.sh: $out already present: jaeger $(version "$out")"
	exit 0
fi

ver="$(grep -E '^\s*github.com/jaegertracing/jaeger v' "$here/go.mod" | awk '{print $2}')"
echo "tools/jaeger/build.sh: building jaeger $ver into $out (takes several minutes)"
start=$(date +%s)
tmp="$(mktemp "$bin_dir/.jaeger.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
(cd "$here" && GOWORK=off CGO_ENABLED=0 go build -trimpath \
	-ldflags="-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=$ver" \
	-o "$tmp" github.com/jaegertracing/jaeger/cmd/jaeger)
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "tools/jaeger/build.sh: built jaeger $(version "$out") in $(( $(date +%s) - start ))s"
