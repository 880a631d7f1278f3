#!/usr/bin/env bash
# Build istio-check (this folder's Go program, built against the istio.io/istio module) into a cache.
#
# Output: a folder  ${ISTIO_CHECK_CACHE:-$HOME/.cache/service-mesh-beacon/istio-check}/<key>/
#   istio-check        the binary (see: istio-check --help)
#   crd-all.gen.yaml   Istio's CRDs from the same istio.io/istio module (what `istio-check check`
#                      validates against by default)
#   .complete          versions and build time
# The folder's path is the only thing printed on stdout; progress goes to stderr. The key names the
# Istio version and a digest of this folder's sources (main.go, go.mod, go.sum), so editing the tool
# or moving Istio builds a new folder and never reuses a stale binary.
#
# Idempotent: when the folder is complete nothing is built and Go is not needed. The first build
# downloads the modules (Go's default module proxy or GOPROXY) and takes about 10-15 minutes on
# 2 cores, about 2 GiB of memory at peak.
#
# Usage: tools/istio-check/build.sh [--print-key]
set -euo pipefail

main() {
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ISTIO_VERSION="$(sed -n -E 's#^[[:space:]]*(require[[:space:]]+)?istio\.io/istio[[:space:]]+(v[^[:space:]]+).*#\2#p' "$HERE/go.mod" | head -n1)"
if [[ -z "$ISTIO_VERSION" ]]; then
    echo "istio-check: cannot find the istio.io/istio requirement in $HERE/go.mod" >&2
    exit 1
fi
SOURCE_DIGEST="$(cat "$HERE/main.go" "$HERE/go.mod" "$HERE/go.sum" | sha256sum | cut -c1-12)"
KEY="istio-${ISTIO_VERSION}_src-${SOURCE_DIGEST}_$(uname -s)-$(uname -m)"
ROOT="${ISTIO_CHECK_CACHE:-$HOME/.cache/service-mesh-beacon/istio-check}"
OUT="$ROOT/$KEY"

if [[ "${1:-}" == "--print-key" ]]; then
    echo "$KEY"
    exit 0
fi

NAME=istio-check
# shellcheck source=../go-tool.sh
source "$(dirname "${BASH_SOURCE[0]}")/../go-tool.sh"

complete() {
    [[ -x "$OUT/istio-check" && -f "$OUT/crd-all.gen.yaml" && -f "$OUT/.complete" ]]
}

exit_if_complete

if ! find_go; then
    cat >&2 <<MSG
istio-check: Go is not installed${GO:+ (GO=$GO is not an executable)}, and the tool is not built yet:
  $OUT
Install Go 1.26 or newer (for example the official linux tarball unpacked to /usr/local/go, then
export PATH=\$PATH:/usr/local/go/bin; or: sudo snap install go --classic). The first build also
needs a Go module proxy (Go's default GOPROXY, or set GOPROXY), about 3 GiB of disk for Go's module
and build caches, about 2 GiB of memory and 10-15 minutes on 2 cores. Then run:
  tools/istio-check/build.sh
MSG
    exit 3
fi
log "using $("$GO" version)"

export CGO_ENABLED=0
export GOWORK=off
# go.sum is committed: the build must use exactly the modules it names.
export GOFLAGS="${GOFLAGS:-} -mod=readonly"

lock_cache

STAGE="$ROOT/.build-$KEY"
rm -rf "$STAGE"
mkdir -p "$STAGE"
start=$SECONDS
log "building against istio.io/istio ${ISTIO_VERSION} (first build: 10-15 minutes)"
(
    cd "$HERE"
    "$GO" build -trimpath -ldflags="-s -w" -o "$STAGE/istio-check" .
    istio_dir="$("$GO" list -m -f '{{.Dir}}' istio.io/istio)"
    cp "$istio_dir/manifests/charts/base/files/crd-all.gen.yaml" "$STAGE/crd-all.gen.yaml"
    chmod u+w "$STAGE/crd-all.gen.yaml"
)
{
    echo "istio=${ISTIO_VERSION}"
    echo "source=${SOURCE_DIGEST}"
    echo "go=$("$GO" env GOVERSION)"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "seconds=$((SECONDS - start))"
} >"$STAGE/.complete"
rm -rf "$OUT"
mv "$STAGE" "$OUT"
log "ready in $((SECONDS - start)) s"
echo "$OUT"
}

main "$@"
exit
