#!/usr/bin/env bash
# Build promtool (Prometheus's rule and query checker, github.com/prometheus/prometheus/cmd/promtool)
# into a cache, for the tests of the beacon's alert rules and dashboard (tests/promtool, tests/envoy).
#
# Output: a folder  ${PROMTOOL_CACHE:-$HOME/.cache/service-mesh-beacon/promtool}/<key>/
#   promtool    the binary (promtool test rules, promtool check rules, promtool check metrics ...)
#   .complete   versions and build time
# The folder's path is the only thing printed on stdout; progress goes to stderr. The version is
# pinned by this folder's go.mod (a `tool` directive) and go.sum; the key names the Prometheus
# module's version and a digest of both files, so moving the pin builds a new folder.
#
# Idempotent: when the folder is complete nothing is built and Go is not needed. The first build
# downloads the modules (Go's default module proxy or GOPROXY) and compiles Prometheus's service
# discovery with its cloud SDKs: 7 minutes (428 s) with an empty Go build cache on a lightly loaded
# 2-core machine, modules already downloaded; 44 minutes when two other Go builds ran (load ~20).
#
# Usage: tools/promtool/build.sh [--print-key | -h | --help]
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: tools/promtool/build.sh [--print-key | -h | --help]

Builds promtool from the github.com/prometheus/prometheus Go module pinned in tools/promtool/go.mod
into ${PROMTOOL_CACHE:-~/.cache/service-mesh-beacon/promtool}/<key>/ and prints that folder on
stdout. When the folder is complete already it prints it at once and builds nothing (Go is then not
needed). One build at a time per cache: a second one waits for the first and reuses its result.

A first build needs Go 1.26 (or GO=/path/to/go), a Go module proxy (GOPROXY), about 1.5 GiB of disk
for Go's module and build caches, and minutes of CPU (about 7 minutes on 2 cores with the modules downloaded; far more on a busy
machine).
USAGE
}

# Everything runs inside main(), which bash reads whole before running it: editing this file while
# a build runs cannot change what that build does.
main() {
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
    usage
    exit 0
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROMETHEUS_VERSION="$(sed -n -E 's#^[[:space:]]*(require[[:space:]]+)?github\.com/prometheus/prometheus[[:space:]]+(v[^[:space:]]+).*#\2#p' "$HERE/go.mod" | head -n1)"
if [[ -z "$PROMETHEUS_VERSION" ]]; then
    echo "promtool: cannot find the github.com/prometheus/prometheus requirement in $HERE/go.mod" >&2
    exit 1
fi
SOURCE_DIGEST="$(cat "$HERE/go.mod" "$HERE/go.sum" | sha256sum | cut -c1-12)"
KEY="prometheus-${PROMETHEUS_VERSION}_src-${SOURCE_DIGEST}_$(uname -s)-$(uname -m)"
ROOT="${PROMTOOL_CACHE:-$HOME/.cache/service-mesh-beacon/promtool}"
OUT="$ROOT/$KEY"

case "${1:-}" in
    --print-key)
        echo "$KEY"
        exit 0
        ;;
    "") ;;
    *)
        echo "promtool: unknown argument: $1" >&2
        usage >&2
        exit 2
        ;;
esac

NAME=promtool
# shellcheck source=../go-tool.sh
source "$(dirname "${BASH_SOURCE[0]}")/../go-tool.sh"

complete() {
    [[ -x "$OUT/promtool" && -f "$OUT/.complete" ]]
}

exit_if_complete

if ! find_go; then
    cat >&2 <<MSG
promtool: Go is not installed${GO:+ (GO=$GO is not an executable)}, and promtool is not built yet:
  $OUT
Install Go 1.26 or newer (for example the official linux tarball unpacked to /usr/local/go, then
export PATH=\$PATH:/usr/local/go/bin; or: sudo snap install go --classic). The first build also
needs a Go module proxy (Go's default GOPROXY, or set GOPROXY), about 1.5 GiB of disk and
minutes of CPU. Then run:
  tools/promtool/build.sh
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
log "building promtool from github.com/prometheus/prometheus ${PROMETHEUS_VERSION} (first build: many minutes)"
(
    cd "$HERE"
    "$GO" build -trimpath -ldflags="-s -w" -o "$STAGE/promtool" github.com/prometheus/prometheus/cmd/promtool
)
"$STAGE/promtool" --version >/dev/null
{
    echo "prometheus=${PROMETHEUS_VERSION}"
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
