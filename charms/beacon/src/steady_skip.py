"""The proof that a reconcile may skip the policy work: digests of its inputs and of the cluster.

A reconcile that found every owned policy as wanted records (``Findings.steady``, kept in the
unit's stored state) a digest of every input of the wanted set and a digest of each listed
policy's name and ``resourceVersion``. The wanted set is a function of those inputs (the code
included), and Kubernetes changes an object's ``resourceVersion`` on every write, by anyone:
when the next reconcile computes the same two digests, the full policy work would write nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SteadyRecord:
    """What a reconcile vouched for.

    Attributes:
        services_listed: the inputs include the namespace's Services (a request names one).
        inputs: :func:`inputs_digest` of that reconcile.
        versions: :func:`listed_digest` of the policies it listed.
    """

    services_listed: bool
    inputs: str
    versions: str

    def encode(self) -> str:
        """The record as stored."""
        return f"{'s' if self.services_listed else '-'}:{self.inputs}:{self.versions}"

    @classmethod
    def decode(cls, text: str) -> SteadyRecord | None:
        """The record stored as ``text``, or ``None`` when there is none (or it is not one)."""
        parts = text.split(":")
        if len(parts) != 3 or parts[0] not in ("s", "-"):
            return None
        return cls(parts[0] == "s", parts[1], parts[2])


def listed_digest(listed: Sequence[Mapping[str, Any]]) -> str | None:
    """A digest of which policies exist and of their ``resourceVersion``, or ``None``."""
    versions: list[tuple[str, str, str]] = []
    for manifest in listed:
        metadata = manifest.get("metadata") or {}
        version = metadata.get("resourceVersion")
        if not version:
            return None
        versions.append((metadata.get("namespace", ""), metadata.get("name", ""), version))
    return hashlib.sha256(json.dumps(sorted(versions)).encode()).hexdigest()


@functools.cache
def code_digest() -> str:
    """A digest of the code that turns the inputs into policies: the beacon's and the library's."""
    import charms.istio_beacon_k8s.v0.service_mesh as library  # noqa: PLC0415

    digest = hashlib.sha256()
    for path in [*sorted(Path(__file__).parent.glob("*.py")), Path(library.__file__)]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def inputs_digest(inputs: Sequence[object]) -> str:
    """A digest of ``inputs`` (JSON, anything else by ``repr``) and of :func:`code_digest`."""
    text = json.dumps([code_digest(), *inputs], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
