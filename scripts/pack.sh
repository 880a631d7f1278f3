#!/usr/bin/env bash
# Pack the charms of this repository into .charm files, each with the shared library inside.
#
# The library's one home is lib/charms/istio_beacon_k8s/v0/service_mesh.py. charmcraft builds in a
# container that sees only the charm's folder, so the file is copied (not linked) into
# charms/<name>/lib/ (git-ignored) before `charmcraft pack`.
#
# Usage:  scripts/pack.sh [beacon|tester ...]      (default: both)
#         tox -e pack runs it through tools/charmcraft/env.sh, which installs the pinned charmcraft
#         and packs without LXD on this host (docs/contributing/dispatch-tier.md).
# Env:    CHARMCRAFT_PACK_ARGS  extra arguments for `charmcraft pack`, e.g. --destructive-mode
#         PACK_OUTPUT_DIR       where the .charm files go (default: <repo>/build/charms)
# Stdout: one line per packed charm, `<name>=<absolute path>` (e.g. beacon=/…/x.charm); progress
#         and charmcraft's own output go to stderr.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LIBRARY=charms/istio_beacon_k8s/v0/service_mesh.py
OUT=${PACK_OUTPUT_DIR:-$ROOT/build/charms}
read -r -a EXTRA_ARGS <<<"${CHARMCRAFT_PACK_ARGS:-}"

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
    if [[ ${#packed[@]} -ne 1 ]]; then
        echo "pack.sh: expected one .charm in charms/$name, found ${#packed[@]}" >&2
        exit 1
    fi
    rm -f "$OUT/${charm_name}"_*.charm
    mv "${packed[0]}" "$OUT/"
    echo "$name=$OUT/$(basename "${packed[0]}")"
done
