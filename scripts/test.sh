#!/usr/bin/env bash
# Runs every test tier that works without Juju: lint, static, unit, the real kube-apiserver tier
# (building etcd and kube-apiserver on first use) and the collection of the integration tests.
# Needs python3 (3.10+) and, for the kube tier, Go; installs the rest (pinned) into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/tox ]; then
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c requirements/constraints.txt tox
fi
exec .venv/bin/tox -m test "$@"
