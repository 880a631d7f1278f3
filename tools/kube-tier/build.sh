#!/usr/bin/env bash
# Build the binaries and collect the CRDs that the real-API-server test tier (tests/k8s) runs on.
#
# Output: a folder  ${KUBE_TIER_CACHE:-$HOME/.cache/service-mesh-beacon/kube-tier}/<versions-key>/
#   bin/etcd             go.etcd.io/etcd/server/v3 (its root package is the etcd server)
#   bin/kube-apiserver   k8s.io/kubernetes/cmd/kube-apiserver
#   crds/istio.yaml      istio.io/api kubernetes/customresourcedefinitions.gen.yaml
#   crds/gateway-api-*.yaml  sigs.k8s.io/gateway-api config/crd/standard/
# The folder's path is the only thing printed on stdout; progress goes to stderr.
#
# Idempotent: when the folder is complete nothing is built and Go is not needed. The sources come
# from the Go module cache (Go's default module proxy, or whatever GOPROXY says); the throwaway
# go.mod files live in a scratch folder inside the cache, never in this repository.
#
# Usage: tools/kube-tier/build.sh [--print-key | -h | --help]
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tools/kube-tier/build.sh [--print-key | -h | --help]

Builds etcd and kube-apiserver from their Go modules and collects the Istio and Gateway API CRDs
for the real-API-server test tier (tests/k8s), into
  ${KUBE_TIER_CACHE:-~/.cache/service-mesh-beacon/kube-tier}/<key>/
and prints that folder on stdout (progress goes to stderr). When the folder is complete already,
it prints it at once and builds nothing (Go is then not needed). One build at a time per cache:
a second one waits for the first and reuses its result.

A first build needs Go 1.26 (or GO=/path/to/go), a Go module proxy (GOPROXY), about 4 GiB of disk,
2.5 GiB of memory and some minutes of CPU (docs/contributing/kube-tier.md has the figures).

Options:
  (none)        build if needed, then print the folder
  --print-key   print only the <key> (the versions and platform; a CI cache key) and exit
  -h, --help    print this help and exit
EOF
}

# Everything runs inside main(), which bash reads whole before running it: editing or updating this
# file while a build runs cannot change what that build does.
main() {
# Help first: it must never start a build.
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
    usage
    exit 0
fi
KUBERNETES_VERSION=v1.37.2
STAGING_VERSION=v0.37.2 # k8s.io/<staging> modules are released as v0.<minor>.<patch>
ETCD_VERSION=v3.6.16
ISTIO_API_VERSION=v1.32.0
GATEWAY_API_VERSION=v1.6.3

KEY="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_istio-api-${ISTIO_API_VERSION}_gateway-api-${GATEWAY_API_VERSION}_$(uname -s)-$(uname -m)"
ROOT="${KUBE_TIER_CACHE:-$HOME/.cache/service-mesh-beacon/kube-tier}"
OUT="$ROOT/$KEY"

case "${1:-}" in
    --print-key)
        echo "$KEY"
        exit 0
        ;;
    "") ;;
    *)
        echo "kube-tier: unknown argument: $1" >&2
        usage >&2
        exit 2
        ;;
esac

NAME=kube-tier
# shellcheck source=../go-tool.sh
source "$(dirname "${BASH_SOURCE[0]}")/../go-tool.sh"

complete() {
    [[ -x "$OUT/bin/etcd" && -x "$OUT/bin/kube-apiserver" && -f "$OUT/crds/istio.yaml" && -f "$OUT/.complete" ]]
}

exit_if_complete

if ! find_go; then
    cat >&2 <<EOF
kube-tier: Go is not installed${GO:+ (GO=$GO is not an executable)}, and the binaries of the
real-API-server test tier are not built yet:
  $OUT
Install Go 1.26 or newer (kube-apiserver ${KUBERNETES_VERSION} needs 1.26; an older Go >= 1.21
fetches 1.26 by itself unless GOTOOLCHAIN=local), for example:
  - the official linux tarball unpacked to /usr/local/go, then: export PATH=\$PATH:/usr/local/go/bin
  - or: sudo snap install go --classic
The first build also needs: access to a Go module proxy (Go's default GOPROXY, or set GOPROXY),
about 4 GiB of disk for Go's module and build caches, about 2.5 GiB of memory, and about
6 minutes on 2 cores. Then run: tools/kube-tier/build.sh
EOF
    exit 3
fi
log "using $("$GO" version)"

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -mod=mod"
# The wrapper modules below are throwaway: do not let a user-level GOWORK/GOTOOLCHAIN surprise us.
export GOWORK=off

lock_cache

STAGE="$ROOT/.build-$KEY"
mkdir -p "$STAGE/bin" "$STAGE/crds" "$STAGE/src"

module_json() { # module@version field -> value of that field in `go mod download -json`
    (cd "$STAGE/src" && "$GO" mod download -json "$1") |
        python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$2"
}

# --- CRDs (cheap; first, so a network problem shows up early) -----------------------------------
log "collecting CRDs"
istio_dir="$(module_json "istio.io/api@${ISTIO_API_VERSION}" Dir)"
cp "$istio_dir/kubernetes/customresourcedefinitions.gen.yaml" "$STAGE/crds/istio.yaml"
gw_dir="$(module_json "sigs.k8s.io/gateway-api@${GATEWAY_API_VERSION}" Dir)"
for f in "$gw_dir"/config/crd/standard/*.yaml; do
    name="$(basename "$f")"
    [[ "$name" == kustomization.yaml ]] && continue
    cp "$f" "$STAGE/crds/gateway-api-$name"
done
chmod -R u+w "$STAGE/crds"

# --- etcd -----------------------------------------------------------------------------------
if [[ ! -x "$STAGE/bin/etcd" ]]; then
    log "building etcd ${ETCD_VERSION}"
    mod="$STAGE/src/etcd"
    rm -rf "$mod" && mkdir -p "$mod"
    (
        cd "$mod"
        "$GO" mod init kube-tier/etcd >/dev/null 2>&1
        "$GO" get -tool "go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
        "$GO" build -trimpath -ldflags="-s -w" -o "$STAGE/bin/etcd.tmp" go.etcd.io/etcd/server/v3
    )
    mv "$STAGE/bin/etcd.tmp" "$STAGE/bin/etcd"
fi

# --- kube-apiserver ---------------------------------------------------------------------------
if [[ ! -x "$STAGE/bin/kube-apiserver" ]]; then
    log "building kube-apiserver ${KUBERNETES_VERSION}"
    mod="$STAGE/src/kube-apiserver"
    rm -rf "$mod" && mkdir -p "$mod"
    upstream_gomod="$(module_json "k8s.io/kubernetes@${KUBERNETES_VERSION}" GoMod)"
    # k8s.io/kubernetes replaces every staging module with a path inside its own tree; a module that
    # depends on it must say which published release of each staging module to use instead.
    staging="$(sed -n -E 's#^[[:space:]]*(k8s\.io/[A-Za-z0-9._-]+)[[:space:]]+=>[[:space:]]+\./staging/.*#\1#p' "$upstream_gomod")"
    if [[ -z "$staging" ]]; then
        log "found no staging replacements in $upstream_gomod; the layout of k8s.io/kubernetes changed"
        exit 1
    fi
    go_line="$(grep -m1 -E '^go [0-9]' "$upstream_gomod")"
    {
        echo "module kube-tier/kube-apiserver"
        echo
        echo "$go_line"
        echo
        echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
        echo
        echo "replace ("
        for m in $staging; do
            echo "	$m => $m ${STAGING_VERSION}"
        done
        echo ")"
    } >"$mod/go.mod"
    minor="${KUBERNETES_VERSION#v1.}"
    minor="${minor%%.*}"
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=${KUBERNETES_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
        ldflags+=" -X $pkg.gitTreeState=clean"
    done
    (
        cd "$mod"
        "$GO" get -tool "k8s.io/kubernetes/cmd/kube-apiserver@${KUBERNETES_VERSION}"
        "$GO" build -trimpath -ldflags="$ldflags" -o "$STAGE/bin/kube-apiserver.tmp" \
            k8s.io/kubernetes/cmd/kube-apiserver
    )
    mv "$STAGE/bin/kube-apiserver.tmp" "$STAGE/bin/kube-apiserver"
fi

# --- publish atomically -----------------------------------------------------------------------
rm -rf "$STAGE/src"
{
    echo "kubernetes=${KUBERNETES_VERSION}"
    echo "etcd=${ETCD_VERSION}"
    echo "istio-api=${ISTIO_API_VERSION}"
    echo "gateway-api=${GATEWAY_API_VERSION}"
    echo "go=$("$GO" env GOVERSION)"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$STAGE/.complete"
rm -rf "$OUT"
mv "$STAGE" "$OUT"
log "ready"
echo "$OUT"
}

main "$@"
exit
