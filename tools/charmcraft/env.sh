#!/usr/bin/env bash
# Run a command where the pinned charmcraft can pack the charms of this repository for their base
# (ubuntu@24.04) without LXD, on this host.
#
# Usage:  tools/charmcraft/env.sh [--print-mode] COMMAND [ARG ...]
#         e.g. tools/charmcraft/env.sh bash scripts/pack.sh
#
# What it does, all idempotent and cached by version (a cold first run takes about a minute):
#   1. apt packages charmcraft needs on the host: python3-venv and python3-apt (charmcraft's
#      destructive mode asks apt, through python3-apt, whether the build packages are installed)
#      and util-linux (unshare). Installed with apt-get when missing (root, or sudo).
#   2. charmcraft (requirements/pack.txt, pinned by requirements/constraints.txt) in its own venv
#      under ~/.cache/service-mesh-beacon/charmcraft/, made with the distribution's python3 so the
#      distribution's python3-apt imports there (a .pth file adds exactly the apt modules).
#   3. A host that charmcraft accepts for --destructive-mode with base ubuntu@24.04:
#        - an Ubuntu 24.04 host: as it is;
#        - any other Linux host (Debian here): COMMAND runs in a private mount namespace
#          (unshare --mount) in which /etc/os-release says Ubuntu 24.04, with a Python 3.12 first
#          on PATH as `python3`, so the charm's venv is built for the base's Python.
#      PACK_MODE=lxd skips this and lets charmcraft use LXD instead (note: a charmcraft that is not
#      a snap installs the charmcraft *snap* from the store inside the LXD instance, so the pin does
#      not hold there).
#   COMMAND sees CHARMCRAFT_PACK_ARGS=--destructive-mode (unless PACK_MODE=lxd or it is set) and
#   PACK_MODE, and finds `charmcraft` on PATH.
# Env:    PACK_MODE            auto (default), destructive (fail unless the host can do it), lxd
#         CHARMCRAFT_CACHE     where the venv goes (default ~/.cache/service-mesh-beacon/charmcraft)
#         PYTHON312            a Python 3.12 to put first on PATH (default: found, see find_python312)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MODE=${PACK_MODE:-auto}
PRINT_MODE=0
if [[ ${1:-} == --print-mode ]]; then
    PRINT_MODE=1
    shift
fi
if [[ ${1:-} == -h || ${1:-} == --help || $# -eq 0 && $PRINT_MODE -eq 0 ]]; then
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi

say() { echo "charmcraft/env.sh: $*" >&2; }
die() { say "$*"; exit 1; }

os_field() { # os_field KEY FILE -> the unquoted value of KEY= in an os-release file
    sed -n "s/^$1=//p" "$2" | head -n 1 | tr -d '"'
}

host_is_base() {
    [[ $(os_field ID /etc/os-release) == ubuntu && $(os_field VERSION_ID /etc/os-release) == 24.04 ]]
}

find_python312() {
    local candidate
    if [[ -n ${PYTHON312:-} ]]; then
        echo "$PYTHON312"
        return
    fi
    for candidate in python3.12 /usr/bin/python3.12; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys, venv, ensurepip; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            command -v "$candidate"
            return
        fi
    done
    local root=${PYENV_ROOT:-$HOME/.pyenv}
    if command -v pyenv >/dev/null 2>&1; then
        root=$(pyenv root)
    fi
    candidate=$(ls -d "$root"/versions/3.12.*/bin/python3.12 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n $candidate && -x $candidate ]]; then
        echo "$candidate"
        return
    fi
    return 1
}

if [[ $MODE == auto ]]; then
    if host_is_base; then
        MODE=native
    elif [[ $(uname -s) == Linux ]]; then
        MODE=namespace
    else
        MODE=lxd
    fi
elif [[ $MODE == destructive ]]; then
    if host_is_base; then MODE=native; else MODE=namespace; fi
elif [[ $MODE != lxd ]]; then
    die "PACK_MODE must be auto, destructive or lxd, not '$MODE'"
fi
if [[ $PRINT_MODE -eq 1 ]]; then
    echo "$MODE"
    [[ $# -eq 0 ]] && exit 0
fi

# ------------------------------------------------------------------------------- 1. apt packages
as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root (or sudo) to run: $*"
    fi
}
needed=()
for package in python3-venv python3-apt util-linux; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || needed+=("$package")
done
if [[ ${#needed[@]} -gt 0 ]]; then
    command -v apt-get >/dev/null || die "this host has no apt-get; install ${needed[*]} by hand or use PACK_MODE=lxd"
    say "installing ${needed[*]} with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${needed[@]}" >&2
fi

# ------------------------------------------------------------------------- 2. charmcraft's venv
SYSTEM_PYTHON=/usr/bin/python3
[[ -x $SYSTEM_PYTHON ]] || die "no $SYSTEM_PYTHON: the distribution's Python is needed (python3-apt is built for it)"
version=$(sed -n 's/^charmcraft==//p' "$ROOT/requirements/constraints.txt")
[[ -n $version ]] || die "requirements/constraints.txt pins no charmcraft"
py_tag=$("$SYSTEM_PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
CACHE=${CHARMCRAFT_CACHE:-$HOME/.cache/service-mesh-beacon/charmcraft}
VENV=$CACHE/charmcraft-$version-py$py_tag
if [[ ! -f $VENV/.complete ]]; then
    say "installing charmcraft $version into $VENV"
    rm -rf "$VENV"
    "$SYSTEM_PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$ROOT/requirements/constraints.txt" -r "$ROOT/requirements/pack.txt" >&2
    # Only the apt modules of the distribution's dist-packages, not everything installed there.
    apt_dir=$VENV/distribution-apt
    mkdir -p "$apt_dir"
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    found=0
    for dist in /usr/lib/python3/dist-packages; do
        for module in "$dist"/apt "$dist"/apt_pkg.cpython-*.so "$dist"/apt_inst.cpython-*.so "$dist"/aptsources; do
            [[ -e $module ]] && ln -sfn "$module" "$apt_dir/" && found=1
        done
    done
    [[ $found -eq 1 ]] || die "python3-apt's modules are not in /usr/lib/python3/dist-packages"
    echo "$apt_dir" >"$site/distribution-apt.pth"
    "$VENV/bin/python" -c 'import apt, apt_pkg' ||
        die "python3-apt does not import in charmcraft's venv ($SYSTEM_PYTHON $py_tag)"
    "$VENV/bin/charmcraft" version >/dev/null 2>&1 || die "charmcraft does not run from $VENV"
    touch "$VENV/.complete"
fi
# tox's settings for the test environments are not for charmcraft (nor the charm builder's pip).
unset PYTHONPATH PIP_CONSTRAINT PYTHONDONTWRITEBYTECODE
export PATH="$VENV/bin:$PATH"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$CACHE/run}
mkdir -p "$XDG_RUNTIME_DIR"
export PACK_MODE=$MODE

# ----------------------------------------------------------------------- 3. a host for the base
case $MODE in
native)
    export CHARMCRAFT_PACK_ARGS=${CHARMCRAFT_PACK_ARGS:---destructive-mode}
    exec "$@"
    ;;
lxd)
    exec "$@"
    ;;
namespace)
    python312=$(find_python312) || die "no Python 3.12 found (the charms' base, ubuntu@24.04, runs 3.12; the packed venv must match): install one (pyenv install 3.12) or set PYTHON312"
    shim=$CACHE/python3.12-first
    mkdir -p "$shim"
    ln -sfn "$python312" "$shim/python3"
    ln -sfn "$python312" "$shim/python3.12"
    os_release=$CACHE/os-release.ubuntu-24.04
    cat >"$os_release" <<'OS'
PRETTY_NAME="Ubuntu 24.04 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
VERSION="24.04 LTS (Noble Numbat)"
VERSION_CODENAME=noble
ID=ubuntu
ID_LIKE=debian
UBUNTU_CODENAME=noble
OS
    export CHARMCRAFT_PACK_ARGS=${CHARMCRAFT_PACK_ARGS:---destructive-mode}
    export PATH="$shim:$PATH"
    if [[ $(id -u) -eq 0 ]]; then
        unshare_cmd=(unshare --mount --propagation private)
    else
        unshare_cmd=(unshare --map-root-user --mount --propagation private)
    fi
    # shellcheck disable=SC2016  # expanded by the inner shell
    exec "${unshare_cmd[@]}" bash -c 'mount --bind "$0" /etc/os-release && exec "$@"' "$os_release" "$@"
    ;;
esac
