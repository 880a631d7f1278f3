#!/usr/bin/env bash
# Run a command where the pinned charmcraft can pack the charms of this repository for one of their
# bases (ubuntu@22.04 or ubuntu@24.04) without LXD, on this host.
#
# Usage:  tools/charmcraft/env.sh [--base 22.04|24.04] [--print-mode] COMMAND [ARG ...]
#         e.g. tools/charmcraft/env.sh --base 22.04 bash scripts/pack.sh
#         --base picks the charms' platform to pack (default 24.04); tox -e pack runs it once per base.
#
# What it does, all idempotent and cached by version (a cold first run takes about a minute):
#   1. apt packages charmcraft needs on the host: python3-venv and python3-apt (charmcraft's
#      destructive mode asks apt, through python3-apt, whether the build packages are installed)
#      and util-linux (unshare). Installed with apt-get when missing (root, or sudo).
#   2. charmcraft (requirements/pack.txt, pinned by requirements/constraints.txt) in its own venv
#      under ~/.cache/service-mesh-beacon/charmcraft/, made with the distribution's python3 so the
#      distribution's python3-apt imports there (a .pth file adds exactly the apt modules).
#   3. A host that charmcraft accepts for --destructive-mode with the chosen base:
#        - a host of that very Ubuntu release: as it is;
#        - any other Linux host (Debian here, or Ubuntu 24.04 packing for 22.04): COMMAND runs in
#          a private mount namespace (unshare --mount) in which /etc/os-release says the base's
#          Ubuntu release, with the base's Python (22.04: 3.10, 24.04: 3.12) first on PATH as
#          `python3`, so the charm's venv is built for the Python that will run it. Without root,
#          the namespace is a user namespace; where the kernel refuses those (Ubuntu 24.04's
#          AppArmor restriction, as on GitHub's runners), sudo makes it and COMMAND runs as the
#          calling user again inside it (setpriv), so the files it writes are the user's.
#      PACK_MODE=lxd skips this and lets charmcraft use LXD instead (note: a charmcraft that is not
#      a snap installs the charmcraft *snap* from the store inside the LXD instance, so the pin does
#      not hold there).
#   COMMAND sees CHARMCRAFT_PACK_ARGS=--destructive-mode (unless PACK_MODE=lxd or it is set),
#   PACK_PLATFORM (the charmcraft.yaml platform of the base, e.g. ubuntu-22.04-amd64) and
#   PACK_MODE, and finds `charmcraft` on PATH.
# Env:    PACK_BASES           the bases to pack, e.g. "24.04" (default: both); for another --base,
#                              env.sh runs nothing and says so (scripts/demo.sh needs 24.04 only)
#         PACK_MODE            auto (default), destructive (fail unless the host can do it), lxd
#         CHARMCRAFT_CACHE     where the venv goes (default ~/.cache/service-mesh-beacon/charmcraft)
#         PYTHON310, PYTHON312 the base's Python to put first on PATH (default: found, see
#                              find_python: python3.X on PATH, else pyenv's or uv's newest 3.X)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MODE=${PACK_MODE:-auto}
PRINT_MODE=0
BASE=24.04
while [[ $# -gt 0 ]]; do
    case $1 in
    --print-mode) PRINT_MODE=1 ;;
    --base)
        [[ $# -ge 2 ]] || { echo "charmcraft/env.sh: --base needs 22.04 or 24.04" >&2; exit 2; }
        BASE=$2
        shift
        ;;
    *) break ;;
    esac
    shift
done
if [[ ${1:-} == -h || ${1:-} == --help || $# -eq 0 && $PRINT_MODE -eq 0 ]]; then
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi

say() { echo "charmcraft/env.sh: $*" >&2; }
die() { say "$*"; exit 1; }

os_field() { # os_field KEY FILE -> the unquoted value of KEY= in an os-release file
    sed -n "s/^$1=//p" "$2" | head -n 1 | tr -d '"'
}

# The bases of the charms (charmcraft.yaml `platforms`): the Python and the os-release of each.
case $BASE in
22.04) PYTHON_VERSION=3.10 CODENAME=jammy RELEASE="Jammy Jellyfish" ;;
24.04) PYTHON_VERSION=3.12 CODENAME=noble RELEASE="Noble Numbat" ;;
*) die "--base must be 22.04 or 24.04, not '$BASE'" ;;
esac
PLATFORM=ubuntu-$BASE-amd64
if [[ -n ${PACK_BASES:-} && " $PACK_BASES " != *" $BASE "* ]]; then
    say "not packing ubuntu@$BASE (PACK_BASES=$PACK_BASES)"
    exit 0
fi

host_is_base() {
    [[ $(os_field ID /etc/os-release) == ubuntu && $(os_field VERSION_ID /etc/os-release) == "$BASE" ]]
}

usable_python() { # usable_python PATH -> true when it is Python $PYTHON_VERSION with venv and ensurepip
    "$1" -c "import sys, venv, ensurepip; assert sys.version_info[:2] == (${PYTHON_VERSION/./, })" 2>/dev/null
}

find_python() { # the base's Python: $PYTHON3XX, python3.X on PATH, else pyenv's or uv's newest 3.X
    local given_var=PYTHON${PYTHON_VERSION/./} candidate root
    if [[ -n ${!given_var:-} ]]; then
        echo "${!given_var}"
        return
    fi
    for candidate in "python$PYTHON_VERSION" "/usr/bin/python$PYTHON_VERSION"; do
        if command -v "$candidate" >/dev/null 2>&1 && usable_python "$(command -v "$candidate")"; then
            command -v "$candidate"
            return
        fi
    done
    root=${PYENV_ROOT:-$HOME/.pyenv}
    if command -v pyenv >/dev/null 2>&1; then
        root=$(pyenv root)
    fi
    while IFS= read -r candidate; do
        if [[ -x $candidate ]] && usable_python "$candidate"; then
            echo "$candidate"
            return
        fi
    done < <(ls -d "$root"/versions/"$PYTHON_VERSION".*/bin/python"$PYTHON_VERSION" \
        "${UV_PYTHON_INSTALL_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/uv/python}"/cpython-"$PYTHON_VERSION".*/bin/python"$PYTHON_VERSION" \
        2>/dev/null | sort -rV)
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
mkdir -p "$CACHE"
# One installer at a time (tox -e pack runs this once per base; other checkouts share the cache).
exec 9>"$CACHE/.install.lock"
flock 9
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
exec 9>&-
# tox's settings for the test environments are not for charmcraft (nor the charm builder's pip).
unset PYTHONPATH PIP_CONSTRAINT PYTHONDONTWRITEBYTECODE
export PATH="$VENV/bin:$PATH"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$CACHE/run}
mkdir -p "$XDG_RUNTIME_DIR"
export PACK_MODE=$MODE
export PACK_PLATFORM=$PLATFORM

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
    python=$(find_python) || die "no Python $PYTHON_VERSION found (the charms' base ubuntu@$BASE runs $PYTHON_VERSION; the packed venv must match): install one (pyenv install $PYTHON_VERSION, uv python install $PYTHON_VERSION) or set PYTHON${PYTHON_VERSION/./}"
    shim=$CACHE/python$PYTHON_VERSION-first
    mkdir -p "$shim"
    ln -sfn "$python" "$shim/python3"
    ln -sfn "$python" "$shim/python$PYTHON_VERSION"
    os_release=$CACHE/os-release.ubuntu-$BASE
    cat >"$os_release" <<OS
PRETTY_NAME="Ubuntu $BASE LTS"
NAME="Ubuntu"
VERSION_ID="$BASE"
VERSION="$BASE LTS ($RELEASE)"
VERSION_CODENAME=$CODENAME
ID=ubuntu
ID_LIKE=debian
UBUNTU_CODENAME=$CODENAME
OS
    export CHARMCRAFT_PACK_ARGS=${CHARMCRAFT_PACK_ARGS:---destructive-mode}
    export PATH="$shim:$PATH"
    # shellcheck disable=SC2016  # expanded by the inner shell
    inner='mount --bind "$0" /etc/os-release && exec "$@"'
    if [[ $(id -u) -eq 0 ]]; then
        exec unshare --mount --propagation private bash -c "$inner" "$os_release" "$@"
    fi
    if unshare --map-root-user --mount true 2>/dev/null; then
        exec unshare --map-root-user --mount --propagation private bash -c "$inner" "$os_release" "$@"
    fi
    # No user namespaces for this user: root makes the mount namespace, then COMMAND runs as the
    # calling user again (with its environment: sudo would reset PATH and HOME).
    sudo -n true 2>/dev/null || die "cannot make a mount namespace: unprivileged user namespaces are refused here and sudo needs a password (run as root, or PACK_MODE=lxd)"
    exec sudo -n --preserve-env env "PATH=$PATH" "HOME=$HOME" unshare --mount --propagation private \
        bash -c 'mount --bind "$0" /etc/os-release && exec setpriv --reuid="$1" --regid="$2" --init-groups "${@:3}"' \
        "$os_release" "$(id -u)" "$(id -g)" "$@"
    ;;
esac
