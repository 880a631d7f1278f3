"""The test harness: stand-ins for what the charms talk to, and helpers the tiers share.

Each module is named for what it stands in for or drives: ``fake_kube`` (the unit tests' API
server), ``kube_server`` (a real kube-apiserver on loopback), ``juju_unit_agent``,
``juju_hook_tools`` and ``pebble_standin`` (what Juju and Pebble do around a packed charm), and so
on. Tests import them as ``support.<module>``, with ``tests/`` on the import path (tox.ini).
The harness's own tests are in ``tests/support/tests`` (``tox -e support``); the tiers under
``tests/`` test what ships.
"""
