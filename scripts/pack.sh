#!/usr/bin/env bash
# Pack the charms of this repository into .charm files, each with the shared library inside.
#
# The library's one home is lib/charms/istio_beacon_k8s/v0/service_mesh.py. charmcraft builds in a
# container that sees only the charm's folder, so the file is copied (not linked) into
# charms/<name>/lib/ (git-ignored) before `charmcraft pack`.
#
# Each charm has two platforms (charmcraft.yaml), one per base: ubuntu-22.04-amd64 and
# ubuntu-24.04-amd64, packed as <charm name>_<platform>.charm (e.g.
# istio-beacon-k8s_ubuntu-22.04-amd64.charm). Deployments use the ubuntu@24.04 one unless told.
#
# Usage:  scripts/pack.sh [beacon|tester ...]      (default: both)
#         tox -e pack runs it through tools/charmcraft/env.sh once per base, which installs the
#         pinned charmcraft and packs that base's platform without LXD on this host
#         (docs/contributing/dispatch-tier.md).
# Env:    CHARMCRAFT_PACK_ARGS  extra arguments for `charmcraft pack`, e.g. --destructive-mode
#         PACK_PLATFORM         pack only this platform (env.sh sets it); default: every platform
#                               charmcraft can build here (with LXD: both)
#         PACK_OUTPUT_DIR       where the .charm files go (default: <repo>/build/charms)
# Stdout: one line per packed charm, `<name>@<base>=<absolute path>` (e.g.
#         beacon@22.04=/…/istio-beacon-k8s_ubuntu-22.04-amd64.charm), and for the ubuntu@24.04
#         one also `<name>=<absolute path>`; progress and charmcraft's own output go to stderr.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LIBRARY=charms/istio_beacon_k8s/v0/service_mesh.py
OUT=${PACK_OUTPUT_DIR:-$ROOT/build/charms}
read -r -a EXTRA_ARGS <<<"${CHARMCRAFT_PACK_ARGS:-}"
if [[ -n ${PACK_PLATFORM:-} ]]; then
    EXTRA_ARGS+=(--platform "$PACK_PLATFORM")
fi

if [[ $# -gt 0 ]]; then
    NAMES=("$@")
else
    NAMES=(beacon tester)
fi

if ! command -v charmcraft >/dev/null; then
    echo "pack.sh: charmcraft is not on PATH (tox -e pack installs the pinned one; or: sudo snap install charmcraft --classic)" >&2
    exit 1
fi
if [[ ! -f "$ROOT/lib/$LIBRARY" ]]; then
    echo "pack.sh: the shared library lib/$LIBRARY is missing" >&2
    exit 1
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

for name in "${NAMES[@]}"; do
    dir="$ROOT/charms/$name"
    if [[ ! -f "$dir/charmcraft.yaml" ]]; then
        echo "pack.sh: no charm at charms/$name (known: beacon, tester)" >&2
        exit 1
    fi
    charm_name=$(sed -n 's/^name:[[:space:]]*//p' "$dir/charmcraft.yaml" | head -n 1)

    mkdir -p "$dir/lib/$(dirname "$LIBRARY")"
    cp "$ROOT/lib/$LIBRARY" "$dir/lib/$LIBRARY"

    # --destructive-mode builds in the charm's folder: start from nothing, leave nothing.
    build_dirs=("$dir/parts" "$dir/stage" "$dir/prime" "$dir/overlay")
    rm -rf "$dir"/*.charm "${build_dirs[@]}"
    echo "pack.sh: packing charms/$name ($charm_name)" >&2
    (cd "$dir" && charmcraft pack ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}) >&2
    rm -rf "${build_dirs[@]}"

    shopt -s nullglob
    packed=("$dir"/*.charm)
    shopt -u nullglob
    if [[ ${#packed[@]} -eq 0 || -n ${PACK_PLATFORM:-} && ${#packed[@]} -ne 1 ]]; then
        echo "pack.sh: expected ${PACK_PLATFORM:+one }.charm in charms/$name${PACK_PLATFORM:+ for $PACK_PLATFORM}, found ${#packed[@]}" >&2
        exit 1
    fi
    # The single-platform name of earlier packs (<name>_amd64.charm) would be taken for a current one.
    rm -f "$OUT/${charm_name}_amd64.charm"
    for charm in "${packed[@]}"; do
        file=$(basename "$charm")
        if [[ ! $file =~ ^${charm_name}_ubuntu-([0-9]+\.[0-9]+)-amd64\.charm$ ]]; then
            echo "pack.sh: charmcraft wrote $file, not ${charm_name}_ubuntu-<base>-amd64.charm" >&2
            exit 1
        fi
        base=${BASH_REMATCH[1]}
        mv -f "$charm" "$OUT/$file"
        echo "$name@$base=$OUT/$file"
        if [[ $base == 24.04 ]]; then
            echo "$name=$OUT/$file"
        fi
    done
done
