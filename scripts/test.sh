#!/usr/bin/env bash
# Runs every test tier that works without Juju: lint, static, unit, the real kube-apiserver tier
# (building etcd and kube-apiserver on first use) and the collection of the integration tests.
# Needs python3 (3.11), python3.10 and python3.12 (found through pyenv when it has them) and, for
# the kube tier, Go; installs the rest (pinned) into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
# The unit tests also run on Python 3.10 and 3.12: let tox find them where pyenv installed them.
if command -v pyenv >/dev/null 2>&1; then
  for version in 3.10 3.12; do
    if ! command -v "python${version}" >/dev/null 2>&1 || ! "python${version}" -V >/dev/null 2>&1; then
      found=$(ls -d "$(pyenv root)/versions/${version}".*/bin 2>/dev/null | sort -V | tail -n 1)
      [ -n "${found}" ] && PATH="${found}:${PATH}"
    fi
  done
  export PATH
fi
if [ ! -x .venv/bin/tox ]; then
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c requirements/constraints.txt tox
fi
exec .venv/bin/tox -m test "$@"
