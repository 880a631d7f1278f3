#!/usr/bin/env bash
# Runs every test tier that works without Juju (`tox -m test`, as CI does): lint, static, unit on
# three Pythons, the harness's self-tests, the real kube-apiserver tier, Istio's verdict and real
# Envoy, the collection of the integration tests, packing and `charmcraft analyse`, the packed
# charms through their dispatch, and the local demo. CONTRIBUTING.md lists the tiers.
# Needs: root (the dispatch and demo tiers run hooks in mount and network namespaces; packing
# installs apt packages on a host other than Ubuntu 24.04), python3 (3.11), Python 3.10 and 3.12
# (on PATH, or installed by pyenv or uv: found even when those tools are not on PATH), Go 1.26 and
# Node (pyright); installs the rest (pinned) into .venv. A cold first run builds etcd,
# kube-apiserver, tools/istio-check and tools/promtool and packs both charms: 35 minutes on an idle
# 2-core machine with every cache empty (measured; a warm run takes 22 to 30 minutes); later runs
# reuse the caches in ~/.cache/service-mesh-beacon.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

# --- Python 3.10 and 3.12 ----------------------------------------------------------------------
# Some tiers run on the Pythons of the charms' bases (Ubuntu 22.04: 3.10, 24.04: 3.12). tox looks
# for them on PATH; put them there from pyenv's or uv's install folders when they are not.
# Each entry: "<version>|<tox envs that need it>".
NEEDED_PYTHONS=(
  "3.10|unit-py310, pack and dispatch (the ubuntu@22.04 charms)"
  "3.12|unit-py312, pack, dispatch and demo (the ubuntu@24.04 charms)"
)

runs() { "$1" -c 'import sys' >/dev/null 2>&1; }

install_roots() { # the folders where pyenv and uv keep the Pythons they installed
  if [ -n "${PYENV_ROOT:-}" ]; then echo "${PYENV_ROOT}/versions"; fi
  if command -v pyenv >/dev/null 2>&1; then echo "$(pyenv root 2>/dev/null)/versions"; fi
  echo "${HOME}/.pyenv/versions"
  echo "${UV_PYTHON_INSTALL_DIR:-${XDG_DATA_HOME:-${HOME}/.local/share}/uv/python}"
}

find_python() { # version -> the bin folder of the newest installed python<version>, if any
  local version=$1 root dir
  local candidates=()
  shopt -s nullglob
  while IFS= read -r root; do
    candidates+=("${root}/${version}".*/bin "${root}/cpython-${version}".*/bin)
  done < <(install_roots)
  shopt -u nullglob
  [ "${#candidates[@]}" -gt 0 ] || return 1
  while IFS= read -r dir; do
    if runs "${dir}/python${version}"; then
      echo "${dir}"
      return 0
    fi
  done < <(printf '%s\n' "${candidates[@]}" | sort -rV)
  return 1
}

missing=()
for entry in "${NEEDED_PYTHONS[@]}"; do
  version=${entry%%|*}
  runs "python${version}" && continue
  if dir=$(find_python "${version}"); then
    PATH="${dir}:${PATH}"
    echo "test.sh: using ${dir}/python${version}" >&2
  else
    missing+=("${entry}")
  fi
done
export PATH
if [ "${#missing[@]}" -gt 0 ]; then
  {
    echo "test.sh: cannot run the whole suite: these Pythons are missing:"
    for entry in "${missing[@]}"; do
      echo "  - Python ${entry%%|*}, for the tox env(s): ${entry#*|}"
    done
    echo "Looked on PATH and in: $(install_roots | sort -u | tr '\n' ' ')"
    cat <<'EOF'
They run the unit tests, and pack and run the packed charms, on the Pythons of the charms' bases
(Ubuntu 22.04 has 3.10, 24.04 has 3.12), and CI must run them, so they are not skipped. Install them with any of:
  - pyenv:  pyenv install 3.10 3.12        (pyenv itself need not be on PATH afterwards)
  - uv:     uv python install 3.10 3.12
  - apt, on the Ubuntu release that ships it: apt-get install python3.10-venv (22.04) or
    python3.12-venv (24.04)
  - anything else that puts python3.10 and python3.12 on PATH
Meanwhile, the other tiers one at a time: tox -e lint (static, unit, k8s, ...: see tox.ini;
tox itself: python3 -m pip install -c requirements/constraints.txt tox).
EOF
  } >&2
  exit 2
fi

if [ ! -x .venv/bin/tox ]; then
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c requirements/constraints.txt tox
fi
exec .venv/bin/tox -m test "$@"
