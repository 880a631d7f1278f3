# Licensed under the Apache License, Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0).
"""Join a Kubernetes charm to the Istio ambient mesh and say, per relation, who may reach it.

This library implements both sides of the ``service_mesh`` interface and the ``cross_model_mesh``
interface, wire-compatible with the charms already deployed in the Juju ecosystem.

Consumer: join the mesh and declare who may reach you
====================================================

Declare the relations in ``charmcraft.yaml``::

    requires:
      service-mesh:
        interface: service_mesh
        limit: 1
      require-cmr-mesh:
        interface: cross_model_mesh
    provides:
      provide-cmr-mesh:
        interface: cross_model_mesh

Then, in the charm's ``__init__``::

    from charms.istio_beacon_k8s.v0.service_mesh import (
        AppPolicy, Endpoint, Method, ServiceMeshConsumer, UnitPolicy,
    )

    self._mesh = ServiceMeshConsumer(
        self,
        policies=[
            # Apps related over "data" may GET /data on port 8080 through this app's Service.
            # Enforced at L7 by the waypoint: methods, paths and hosts are checked.
            AppPolicy(
                relation="data",
                endpoints=[Endpoint(ports=[8080], methods=[Method.get], paths=["/data"])],
            ),
            # Apps related over "metrics" may open connections to this app's pods on 9090.
            # Enforced at L4 by ztunnel: only ports can be restricted.
            UnitPolicy(relation="metrics", ports=[9090]),
        ],
    )

The consumer publishes one request per declared policy and per related application, and keeps it
up to date as relations come and go. With ``auto_join=True`` (the default) the leader also puts the
mesh labels the provider publishes on the charm's StatefulSet pod template and Service, which needs
the charm to be trusted (``juju trust <app> --scope=cluster``); when that fails, the consumer adds
a Blocked app status through collect-status that says so.

Across models, the application that *receives* traffic provides ``cross_model_mesh`` and the one
that *sends* requires it: the sender announces its real app and model names, and the receiver uses
them as the source of its policies.

Provider: publish the mesh and read the requests
=================================================

::

    self._mesh = ServiceMeshProvider(self, labels={"istio.io/dataplane-mode": "ambient"})
    for request in self._mesh.relation_requests():
        if request.error:
            ...  # report it; every other relation is still served
        for policy in request.policies:
            ...

Charms that manage policies themselves turn :class:`MeshPolicy` objects into Istio
AuthorizationPolicies with the pure :func:`build_authorization_policy`, or hand them to a
:class:`PolicyResourceManager` that owns its objects by label and converges them.

Kubernetes and tests
====================

The library reaches Kubernetes only as the pod's service account (:func:`in_cluster_client`);
outside a pod it makes no call and the consumer says so in its app status. Unit tests of a charm
wrap their ``ops.testing`` runs in :func:`use_kubernetes_client`: ``None`` for no Kubernetes at
all, or a lightkube ``Client`` of a test API server.

Cost: importing this module imports neither lightkube nor pydantic; lightkube is imported on first
use of Kubernetes.

Public surface and compatibility
================================

``__all__`` lists the public names; everything else may change in any patch. Some of them exist
only so that charms written against the deployed pydantic-based releases keep working: the
section "The pydantic-style methods of the releases built on pydantic" (``model_dump``,
``model_validate`` and the like on every data type), the deprecated :class:`Policy`,
and ``label_configmap_name_template``. New code needs none of them.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import json
import logging
import re
import warnings
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import ops

if TYPE_CHECKING:
    from lightkube import Client
    from lightkube.generic_resource import GenericNamespacedResource

# The unique Charmhub library identifier, never change it
LIBID = "644d8fe2859948bb9e8a1a4b4acefba9"

# Increment this major API version when introducing breaking changes
LIBAPI = 0

# Increment this PATCH version before using `charmcraft publish-lib` or reset
# to 0 if you are raising the major API version
LIBPATCH = 21

PYDEPS = ["lightkube>=0.15"]

__all__ = [
    "MAX_ENDPOINTS_PER_POLICY",
    "MAX_ITEMS_PER_FIELD",
    "MAX_JSON_DEPTH",
    "MAX_LABELS",
    "MAX_NUMBER_LENGTH",
    "MAX_POLICIES_BYTES",
    "MAX_POLICIES_PER_RELATION",
    "MAX_SMALL_VALUE_BYTES",
    "MAX_STRING_LENGTH",
    "MESH_LABEL_KEYS",
    "SERVICE_ACCOUNT_DIR",
    "AppPolicy",
    "CMRData",
    "Endpoint",
    "KubernetesUnavailableError",
    "MeshDataError",
    "MeshPolicy",
    "MeshType",
    "Method",
    "MissingCRDError",
    "Policy",
    "PolicyResourceManager",
    "PolicyTargetType",
    "ReconcileSummary",
    "RelationRequest",
    "ServiceMeshConsumer",
    "ServiceMeshProvider",
    "ServiceMeshProviderAppData",
    "UnitPolicy",
    "UnitPolicyError",
    "authorization_policy_name",
    "build_authorization_policies",
    "build_authorization_policy",
    "build_mesh_policies",
    "get_data_from_cmr_relation",
    "get_default_labels",
    "in_cluster_client",
    "label_configmap_name",
    "label_configmap_name_template",
    "parse_policies",
    "reconcile_charm_labels",
    "use_kubernetes_client",
]

logger = logging.getLogger(__name__)

# Relation data keys (wire format).
_POLICIES_KEY = "policies"
_LABELS_KEY = "labels"
_MESH_TYPE_KEY = "mesh_type"
_CMR_DATA_KEY = "cmr_data"
_OWNED_KEY = "owned"
# Marks, in the provider's memory, a databag that could not be read (never valid JSON).
_UNREADABLE = "\x00unreadable:"
#: The only label keys a consumer takes from the provider: those that put a pod on the mesh.
MESH_LABEL_KEYS = frozenset(
    ("istio.io/dataplane-mode", "istio.io/use-waypoint", "istio.io/use-waypoint-namespace")
)
# The one data-plane mode a consumer accepts: any other value ("none") takes its pods off the mesh.
_AMBIENT = "ambient"


def _mesh_label_problem(labels: Mapping[str, str], model_name: str) -> str:
    """Why a consumer must not put the provider's mesh labels on its objects, or ``""``.

    ``istio.io/dataplane-mode`` must be ``ambient``, and the waypoint must be in this model's
    namespace: the beacon serves its own model only, so a waypoint elsewhere is not one that
    enforces this app's policies.
    """
    mode = labels.get("istio.io/dataplane-mode")
    if mode is not None and mode != _AMBIENT:
        return (
            f"ignoring the mesh labels: istio.io/dataplane-mode is {_display_text(mode)}, "
            "not ambient"
        )
    namespace = labels.get("istio.io/use-waypoint-namespace")
    if namespace is not None and namespace != model_name:
        return (
            f"ignoring the mesh labels: the waypoint is in namespace {_display_text(namespace)}, "
            f"not this model's ({model_name})"
        )
    return ""


# How Juju names, on the offering side, an app that relates to an offer from another model.
_CROSS_MODEL_ALIAS = re.compile(r"remote-[0-9a-f]{32}\Z")

_AUTHZ_GROUP = "security.istio.io"
_AUTHZ_VERSION = "v1"
_AUTHZ_KIND = "AuthorizationPolicy"
_AUTHZ_PLURAL = "authorizationpolicies"
_TRUST_DOMAIN = "cluster.local"
# Where Istio reads each mesh label: the data-plane mode on pods, the waypoint on Services. The
# same label elsewhere does nothing (a waypoint for Services ignores it on pods), so it is not put
# there; labels Istio reads on both, or that this library does not know, go on both.
_POD_ONLY_LABELS = frozenset({"istio.io/dataplane-mode"})
_SERVICE_ONLY_LABELS = frozenset({"istio.io/use-waypoint", "istio.io/use-waypoint-namespace"})
_MAX_NAME_LENGTH = 253
_MAX_LABEL_VALUE_LENGTH = 63


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class MeshDataError(ValueError):
    """Relation data or a declaration that does not follow the service_mesh data model."""


class UnitPolicyError(MeshDataError):
    """A unit policy asked for something ztunnel cannot enforce (methods, paths or hosts)."""


class MissingCRDError(Exception):
    """A custom resource definition that the mesh needs is not installed in the cluster.

    Attributes:
        resource: the missing resource, as ``<plural>.<group>``.
    """

    def __init__(self, resource: str, hint: str):
        super().__init__(f"the {resource} custom resource definition is not installed: {hint}")
        self.resource = resource


# ---------------------------------------------------------------------------------------------
# Enumerations
# ---------------------------------------------------------------------------------------------


class MeshType(str, enum.Enum):
    """Supported mesh types."""

    istio = "istio"


class Method(str, enum.Enum):
    """HTTP methods that an :class:`Endpoint` can allow."""

    connect = "CONNECT"
    delete = "DELETE"
    get = "GET"
    head = "HEAD"
    options = "OPTIONS"
    patch = "PATCH"
    post = "POST"
    put = "PUT"
    trace = "TRACE"


class PolicyTargetType(str, enum.Enum):
    """What a policy targets: the app's Service (``app``, L7) or its pods (``unit``, L4)."""

    app = "app"
    unit = "unit"


# ---------------------------------------------------------------------------------------------
# Validation helpers (plain Python: no schema library is loaded on import)
# ---------------------------------------------------------------------------------------------


def _fail(where: str, message: str) -> MeshDataError:
    return MeshDataError(f"{where}: {message}")


# Limits on what one relation may send. Relation data is written by the other side, which may be
# hostile: each limit is far above what an honest charm sends, and is named in the refusal.
MAX_POLICIES_BYTES = 1_048_576
"""Bytes of one ``policies`` value (one consumer's databag); checked before parsing."""
MAX_SMALL_VALUE_BYTES = 16_384
"""Bytes of a ``labels``, ``mesh_type`` or ``cmr_data`` value; checked before parsing."""
MAX_POLICIES_PER_RELATION = 1000
"""Policies one relation may request."""
MAX_ENDPOINTS_PER_POLICY = 64
"""Endpoints of one policy."""
MAX_ITEMS_PER_FIELD = 64
"""Hosts, ports, methods or paths of one endpoint."""
MAX_LABELS = 32
"""Labels of a selector, or published by a provider."""
MAX_STRING_LENGTH = 1024
"""Characters of any one string."""
MAX_JSON_DEPTH = 12
"""Nesting of arrays and objects in one value (a policy needs 6)."""
MAX_NUMBER_LENGTH = 24
"""Characters of any one number (a port needs 5)."""
_MAX_DISPLAY_LENGTH = 64
"""Characters of one value of relation data shown in a status, log line or action result."""

# The names a source may carry in relation data: what can be a Kubernetes service account
# (a DNS-1123 subdomain) and namespace (a DNS-1123 label), as the deployed library accepted
# (``app1-1`` is no Juju application name, yet a valid service account). Neither can hold a
# pattern (``*``, ``?``), a ``/`` (another segment of the principal), a space or a control
# character: the principal ``cluster.local/ns/<namespace>/sa/<name>`` names one identity.
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SERVICE_ACCOUNT_NAME = re.compile(rf"(?=.{{1,253}}\Z){_DNS_LABEL}(?:\.{_DNS_LABEL})*\Z")
_NAMESPACE_NAME = re.compile(rf"{_DNS_LABEL}\Z")
# What a source name may hold in a MeshPolicy built in code: no ``*`` (a prefix or suffix
# wildcard in an Istio principal), no ``/`` (another path segment), no space or control.
_SOURCE_TOKEN = re.compile(r"[^\s*/]+\Z")
_LABEL_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?"
_LABEL_PREFIX = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
_LABEL_KEY = re.compile(rf"(?:{_LABEL_PREFIX}/)?{_LABEL_NAME}\Z")
_LABEL_VALUE = re.compile(rf"(?:{_LABEL_NAME})?\Z")
# A string, or an unterminated one running to the end of the text (with any lone backslash
# there): every quote where a match starts ends a match, so a search never scans the rest of
# the text from each escaped quote of an unterminated string (quadratic: minutes for 1 MB).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
# Outside strings: what is not a bracket, and what may be part of a number or a constant.
_JSON_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_JSON_NUMBER_RUN = re.compile(rf"[-+.0-9eE]{{{MAX_NUMBER_LENGTH + 1},}}|[NI]")


def _display_text(value: object, limit: int = _MAX_DISPLAY_LENGTH, *, quote: bool = True) -> str:
    """``value`` made safe to show to people: in a status, a log line or an action's result.

    Control, format and unassigned characters (newlines, terminal escapes, bidirectional
    overrides, lone surrogates) are escaped, the text is cut after ``limit`` characters with the
    count of the rest, and, with ``quote``, put in double quotes so that it cannot pass for the
    message around it. The result has at most ``limit`` characters (for a ``limit`` long enough
    to hold the count). Values that are not strings show their type and, for scalars, their JSON.
    """
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, int):
        text = (
            str(value) if value.bit_length() < 64 else f"an integer of {value.bit_length()} bits"
        )
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = type(value).__name__
    limit = max(limit, 0)
    pieces = [_escape_char(char, quote) for char in text[:limit]]
    # At most ``limit`` characters in all (quotes and the count of what is cut included).
    room = limit - (2 if quote else 0)
    if len(text) > limit or sum(map(len, pieces)) > room:
        room -= len(f"... (+{len(text)} more)")
        kept = 0
        used = 0
        for piece in pieces:
            if used + len(piece) > room:
                break
            used += len(piece)
            kept += 1
        body = "".join(pieces[:kept])
        body = f'"{body}"' if quote else body
        return f"{body}... (+{len(text) - kept} more)"
    body = "".join(pieces)
    return f'"{body}"' if quote else body


def _escape_char(char: str, quote: bool) -> str:
    if char in '"\\' and quote:
        return "\\" + char
    if char.isprintable():
        return char
    if char == "\n":
        return "\\n"
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _describe(value: object) -> str:
    if isinstance(value, (str, int, float, bool, type(None))):
        return f"{type(value).__name__} {_display_text(value, quote=isinstance(value, str))}"
    return type(value).__name__


def _str(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, f"expected a non-empty string, got {_describe(value)}")
    if len(value) > MAX_STRING_LENGTH:
        raise _fail(where, f"{len(value)} characters, more than the limit of {MAX_STRING_LENGTH}")
    if not value.isprintable():
        raise _fail(
            where,
            f"control, format or invalid character in {_display_text(value)} (lone surrogates "
            "are not valid UTF-8)",
        )
    return value


def _opt_str(value: object, where: str) -> str | None:
    return None if value is None else _str(value, where)


def _matching(value: object, where: str, pattern: re.Pattern[str], what: str) -> str:
    text = _str(value, where)
    if not pattern.match(text):
        raise _fail(where, f"expected {what}, got {_display_text(text)}")
    return text


def _source_token(value: object, where: str) -> str:
    return _matching(value, where, _SOURCE_TOKEN, "a name without '*', '/' or spaces")


def _service_account_name(value: object, where: str) -> str:
    return _matching(
        value, where, _SERVICE_ACCOUNT_NAME, "an application (Kubernetes service account) name"
    )


def _namespace_name(value: object, where: str) -> str:
    return _matching(value, where, _NAMESPACE_NAME, "a model (Kubernetes namespace) name")


def _sequence(value: object, where: str, what: str) -> Sequence[object]:
    if not isinstance(value, (list, tuple)):
        raise _fail(where, f"expected a list of {what}, got {_describe(value)}")
    items = cast("Sequence[object]", value)
    if len(items) > MAX_ITEMS_PER_FIELD:
        raise _fail(where, f"{len(items)} items, more than the limit of {MAX_ITEMS_PER_FIELD}")
    return items


def _str_list(value: object, where: str) -> list[str] | None:
    if value is None:
        return None
    items = _sequence(value, where, "strings")
    return [_str(item, f"{where}[{i}]") for i, item in enumerate(items)]


def _port_list(value: object, where: str) -> list[int] | None:
    if value is None:
        return None
    ports: list[int] = []
    for i, item in enumerate(_sequence(value, where, "port numbers")):
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= 65535:
            raise _fail(f"{where}[{i}]", f"expected a port number 1-65535, got {_describe(item)}")
        ports.append(item)
    return ports


def _method_list(value: object, where: str) -> list[Method] | None:
    if value is None:
        return None
    methods: list[Method] = []
    for i, item in enumerate(_sequence(value, where, "HTTP methods")):
        try:
            methods.append(Method(item))
        except ValueError:
            allowed = " ".join(m.value for m in Method)
            raise _fail(
                f"{where}[{i}]", f"expected one of {allowed}, got {_describe(item)}"
            ) from None
    return methods


def _labels(value: object, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object of string labels, got {_describe(value)}")
    items = cast("dict[object, object]", value)
    if len(items) > MAX_LABELS:
        raise _fail(where, f"{len(items)} labels, more than the limit of {MAX_LABELS}")
    result: dict[str, str] = {}
    for key, item in items.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise _fail(
                where,
                f"labels must map strings to strings, got {_describe(key)}: {_describe(item)}",
            )
        prefix, _, name = key.rpartition("/")
        if len(prefix) > 253 or len(name) > 63 or not _LABEL_KEY.match(key):
            raise _fail(where, f"invalid label key {_display_text(key)}")
        if len(item) > _MAX_LABEL_VALUE_LENGTH or not _LABEL_VALUE.match(item):
            raise _fail(where, f"invalid value {_display_text(item)} of label {key}")
        result[key] = item
    return result


# What Istio (the waypoint's Envoy, ztunnel, the Kubernetes API) can match. A value outside these
# is either refused by Istio's admission webhook or accepted and never matched (silent deny), so it
# is refused here, where the charm author or the provider sees which field to fix.
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_NAME_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
# Letters, digits, "-", ".", "_", "~": RFC 3986 unreserved characters, which Envoy decodes.
_ENCODED_UNRESERVED = re.compile(r"%(?:2[dDeE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA]|5[fF]|7[eE])")
_PATH_REFUSED_CHAR = re.compile(r"[\x00-\x20\x7f-\U0010ffff?#]")
# Paths of the common shapes ("/api", "/api/", "/api/*", "/api*", "*"): a subset of what
# _http_path accepts (ASCII, no '%', no template, no segment starting with '.'), so that matching
# it needs no other check. Anything else goes through _http_path, which also words the error.
_PLAIN_PATH = re.compile(r"(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*/?\*?")
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9\-._~%!$&'()+,;:@=]+")  # RFC 3986 pchar, as Istio checks
_HOST = re.compile(r"[A-Za-z0-9._\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_PATH_FIX = (
    'use an absolute path ("/api"), a prefix ("/api/*"), a suffix ("*.js"), "*" for any path, '
    'or a template whose whole segments are {*} or {**} ("/api/{*}/items/{**}", {**} last)'
)
_HOST_FIX = (
    'use a host as sent in the Host header ("app.example.com", "app:8080"), a "*" prefix or '
    'suffix ("*.example.com"), or "*" for any host'
)


def _http_path(path: str, where: str) -> str:
    def refuse(problem: str) -> MeshDataError:
        return _fail(where, f"{problem}; {_PATH_FIX}")

    if _PATH_REFUSED_CHAR.search(path):
        raise refuse(
            f"{json.dumps(path)} has a space, a control or non-ASCII character, '?' or '#', "
            "which a request path never holds (percent-encode it)"
        )
    encoded = _ENCODED_UNRESERVED.search(path)
    if encoded:
        plain = json.dumps(chr(int(encoded.group()[1:], 16)))
        raise refuse(
            f"{json.dumps(path)} percent-encodes {json.dumps(encoded.group())}, which Envoy "
            f"decodes before matching: write {plain} instead"
        )
    if "{" in path or "}" in path:
        problem = _path_template_problem(path)
        if problem:
            raise refuse(f"{json.dumps(path)} {problem}")
        return path
    if path == "*":
        return path
    stars = path.count("*")
    if stars > 1 or (stars == 1 and not (path.startswith("*") or path.endswith("*"))):
        raise refuse(f"{json.dumps(path)} has a '*' that is not its first or last character")
    if not path.startswith(("/", "*")):
        raise refuse(f"{json.dumps(path)} does not start with '/'")
    # The segment a '*' touches is partial ("/a/.*" may match "/a/.well-known"): not checked.
    segments = path.strip("*").split("/")[path.startswith("*") :]
    if path.endswith("*"):
        segments = segments[:-1]
    if any(segment in (".", "..") for segment in segments):
        raise refuse(f"{json.dumps(path)} has a '.' or '..' segment, which Envoy normalizes away")
    return path


def _path_template_problem(path: str) -> str:
    if not path.startswith("/"):
        return "does not start with '/'"
    last_seen = False
    for segment in path.strip("/").split("/"):
        if last_seen:
            return "has a segment after {**}"
        if segment in ("{*}", "{**}"):
            last_seen = segment == "{**}"
        elif not _PATH_SEGMENT.fullmatch(segment):
            return f"has segment {json.dumps(segment)}, not allowed"
    return ""


def _http_host(host: str, where: str) -> str:
    if host == "*":
        return host
    body = host[1:] if host.startswith("*") else host[:-1] if host.endswith("*") else host
    if not _HOST.fullmatch(body):
        raise _fail(where, f"{json.dumps(host)} can never match a Host header; {_HOST_FIX}")
    return host


def _checked_list(value: object, where: str, check: Callable[[str, str], str]) -> list[str] | None:
    items = _str_list(value, where)
    return (
        None if items is None else [check(item, f"{where}[{i}]") for i, item in enumerate(items)]
    )


def _check_service_name(name: str, where: str) -> str:
    if len(name) > _MAX_LABEL_VALUE_LENGTH or not _DNS1035_LABEL.fullmatch(name):
        raise _fail(
            where,
            f"{json.dumps(name)} is not a Kubernetes Service name: use at most 63 lower-case "
            "letters, digits and '-', starting with a letter and ending with a letter or digit",
        )
    return name


def _check_label_value(value: str, where: str) -> str:
    if len(value) > _MAX_LABEL_VALUE_LENGTH or (value and not _LABEL_NAME_PART.fullmatch(value)):
        raise _fail(
            where,
            f"{json.dumps(value)} is not a Kubernetes label value: use at most 63 letters, "
            "digits, '-', '_' or '.', starting and ending with a letter or digit",
        )
    return value


def _mapping(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object, got {_describe(value)}")
    return cast("Mapping[str, object]", value)


# ---------------------------------------------------------------------------------------------
# The pydantic-style methods of the releases built on pydantic
# ---------------------------------------------------------------------------------------------

_Model = TypeVar("_Model", bound="_PydanticStyle")


def _filter_entry(spec: object, name: str) -> tuple[bool, object]:
    """Whether ``spec`` (a pydantic include/exclude argument) names ``name``, and what nested."""
    if spec is None:
        return False, None
    if isinstance(spec, Mapping):
        entries = cast("Mapping[str, object]", spec)
        if name not in entries:
            return False, None
        nested = entries[name]
        return True, (None if nested is True or nested is Ellipsis else nested)
    return name in cast("Iterable[str]", spec), None


def _model_field_names(model: type) -> tuple[str, ...]:
    import dataclasses

    return tuple(item.name for item in dataclasses.fields(cast("Any", model)))


def _dump_value(
    value: object, json_mode: bool, options: Mapping[str, bool], nested: object
) -> Any:
    if isinstance(value, _PydanticStyle):
        return value.dump_fields(json_mode, options, None, nested)
    if isinstance(value, enum.Enum):
        return value.value if json_mode else value
    if isinstance(value, (list, tuple)):
        items = cast("Sequence[object]", value)
        every = (
            cast("Mapping[str, object]", nested).get("__all__")
            if isinstance(nested, Mapping)
            else None
        )
        return [_dump_value(item, json_mode, options, every) for item in items]
    if isinstance(value, dict):
        mapping = cast("dict[object, object]", value)
        return {key: _dump_value(item, json_mode, options, None) for key, item in mapping.items()}
    return value


class _PydanticStyle:
    """``model_dump``, ``model_dump_json`` and ``model_validate``, as pydantic's ``BaseModel``.

    The releases of this library built on pydantic exposed these on every data model; charms call
    them, so they keep their results here: the same keys in the same order, enum members in the
    default ``python`` mode and their values in ``json`` mode, nested models as dicts, and
    ``exclude_none`` / ``exclude_unset`` / ``exclude_defaults`` / ``include`` / ``exclude``.
    """

    # The defaults the pydantic-based releases declared, for ``exclude_defaults``.
    _model_defaults: ClassVar[Mapping[str, object]] = {}
    _fields_set: frozenset[str]

    @property
    def model_fields_set(self) -> set[str]:
        """The fields given explicitly when this object was made (pydantic's meaning)."""
        fields_set = getattr(self, "_fields_set", None)
        return set(_model_field_names(type(self)) if fields_set is None else fields_set)

    def dump_fields(
        self, json_mode: bool, options: Mapping[str, bool], include: object, exclude: object
    ) -> dict[str, Any]:
        """The fields as a dict (what :meth:`model_dump` returns); nested models are dumped too."""
        fields_set = self.model_fields_set
        result: dict[str, Any] = {}
        for name in _model_field_names(type(self)):
            included, nested_include = _filter_entry(include, name)
            if include is not None and not included:
                continue
            excluded, nested_exclude = _filter_entry(exclude, name)
            if excluded and nested_exclude is None:
                continue
            if options["exclude_unset"] and name not in fields_set:
                continue
            value = getattr(self, name)
            if options["exclude_none"] and value is None:
                continue
            if (
                options["exclude_defaults"]
                and name in self._model_defaults
                and value == self._model_defaults[name]
            ):
                continue
            if nested_include is not None and isinstance(value, _PydanticStyle):
                result[name] = value.dump_fields(
                    json_mode, options, nested_include, nested_exclude
                )
            else:
                result[name] = _dump_value(value, json_mode, options, nested_exclude)
        return result

    def model_dump(
        self,
        *,
        mode: str = "python",
        include: set[str] | frozenset[str] | Mapping[str, Any] | None = None,
        exclude: set[str] | frozenset[str] | Mapping[str, Any] | None = None,
        by_alias: bool | None = None,
        exclude_unset: bool = False,
        exclude_defaults: bool = False,
        exclude_none: bool = False,
        round_trip: bool = False,
        **_: object,
    ) -> dict[str, Any]:
        """The fields as a dict, as pydantic's ``BaseModel.model_dump`` returns them.

        ``mode="python"`` (the default) keeps enum members (they are ``str`` subclasses, so
        ``json.dumps`` writes their value); ``mode="json"`` gives plain JSON values. No field
        has an alias, so ``by_alias`` and ``round_trip`` change nothing.

        Raises:
            ValueError: an unknown ``mode``.
        """
        if mode not in ("python", "json"):
            raise ValueError(f"mode must be 'python' or 'json', got {mode!r}")
        options = {
            "exclude_unset": exclude_unset,
            "exclude_defaults": exclude_defaults,
            "exclude_none": exclude_none,
        }
        return self.dump_fields(mode == "json", options, include, exclude)

    def model_dump_json(
        self,
        *,
        indent: int | None = None,
        include: set[str] | frozenset[str] | Mapping[str, Any] | None = None,
        exclude: set[str] | frozenset[str] | Mapping[str, Any] | None = None,
        by_alias: bool | None = None,
        exclude_unset: bool = False,
        exclude_defaults: bool = False,
        exclude_none: bool = False,
        round_trip: bool = False,
        **_: object,
    ) -> str:
        """The fields as JSON text, as pydantic writes it: compact, non-ASCII left as is."""
        data = self.model_dump(
            mode="json",
            include=include,
            exclude=exclude,
            exclude_unset=exclude_unset,
            exclude_defaults=exclude_defaults,
            exclude_none=exclude_none,
        )
        if indent is None:
            return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return json.dumps(data, ensure_ascii=False, indent=indent)

    @classmethod
    def model_validate(cls: type[_Model], obj: object, **_: object) -> _Model:
        """Validate a dict (or return an instance as is), as pydantic's ``model_validate``.

        Keys that are not fields are ignored; missing fields take their defaults.

        Raises:
            MeshDataError: naming the offending field (a ``ValueError``, as pydantic's
                ``ValidationError`` is).
        """
        if isinstance(obj, cls):
            return obj
        body = _mapping(obj, cls.__name__)
        instance = cls.from_model_dict(body)
        names = set(_model_field_names(cls))
        object.__setattr__(instance, "_fields_set", frozenset(key for key in body if key in names))
        return instance

    @classmethod
    def model_validate_json(cls: type[_Model], json_data: str | bytes, **_: object) -> _Model:
        """:meth:`model_validate` of JSON text.

        Raises:
            MeshDataError: the text is not JSON, or does not validate.
        """
        try:
            data = json.loads(json_data)
        except json.JSONDecodeError as error:
            raise MeshDataError(f"{cls.__name__}: {_json_error(error)}") from None
        return cls.model_validate(data)

    @classmethod
    def from_model_dict(cls: type[_Model], body: Mapping[str, object]) -> _Model:
        """Build from the dict form; each model says how (missing keys take their defaults)."""
        return cls(**{key: value for key, value in body.items() if key in _model_field_names(cls)})


def _records_fields_set(cls: type[_Model]) -> type[_Model]:
    """Make the constructor remember which fields were given (``model_fields_set``)."""
    init = cls.__init__
    names = _model_field_names(cls)

    @functools.wraps(init)
    def __init__(self: _Model, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        init(self, *args, **kwargs)
        given = set(names[: len(args)]) | {key for key in kwargs if key in names}
        object.__setattr__(self, "_fields_set", frozenset(given))

    cls.__init__ = __init__
    return cls


# ---------------------------------------------------------------------------------------------
# What a charm declares
# ---------------------------------------------------------------------------------------------


@_records_fields_set
@dataclass(frozen=True, init=False)
class Endpoint(_PydanticStyle):
    """What a source may reach: any combination of hosts, ports, HTTP methods and paths.

    Unset (``None``) or empty fields do not restrict anything.

    Attributes:
        hosts: ``Host`` header values, e.g. ``["myapp.example.com"]``; a ``*`` may start or end
            one (``"*.example.com"``). A client names the port in the header when it is not the
            scheme's default (``"myapp:8080"``).
        ports: destination ports.
        methods: HTTP methods; :class:`Method` members or their upper-case names.
        paths: URL paths starting with ``/``: exact (``"/api"``), a prefix (``"/api/*"``), a
            suffix (``"*.js"``), ``"*"`` for any path, or an Istio template whose whole segments
            are ``{*}`` (one segment) or ``{**}`` (the rest; last), e.g. ``"/api/{*}/items"``.
            Envoy normalizes a request's path before matching (``.`` and ``..`` segments
            resolved, percent-encoded letters, digits, ``-._~`` decoded): write paths that way.

    Raises:
        MeshDataError: a value Istio would refuse or could never match, naming the field and
            what to write instead.
    """

    hosts: list[str] | None
    ports: list[int] | None
    methods: list[Method] | None
    paths: list[str] | None

    _model_defaults: ClassVar[Mapping[str, object]] = {
        "hosts": None,
        "ports": None,
        "methods": None,
        "paths": None,
    }

    def __init__(
        self,
        hosts: Sequence[str] | None = None,
        ports: Sequence[int] | None = None,
        methods: Sequence[Method | str] | None = None,
        paths: Sequence[str] | None = None,
    ):
        object.__setattr__(self, "hosts", _checked_list(hosts, "Endpoint.hosts", _http_host))
        object.__setattr__(self, "ports", _port_list(ports, "Endpoint.ports"))
        object.__setattr__(self, "methods", _method_list(methods, "Endpoint.methods"))
        object.__setattr__(self, "paths", _checked_list(paths, "Endpoint.paths", _http_path))

    @property
    def restricts_beyond_ports(self) -> bool:
        """Whether this endpoint restricts hosts, methods or paths (which need L7 enforcement)."""
        return bool(self.hosts or self.methods or self.paths)

    def to_dict(self) -> dict[str, Any]:
        """The wire form: all four keys, ``null`` where unset."""
        return {
            "hosts": None if self.hosts is None else list(self.hosts),
            "ports": None if self.ports is None else list(self.ports),
            "methods": None if self.methods is None else [m.value for m in self.methods],
            "paths": None if self.paths is None else list(self.paths),
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "endpoint") -> Endpoint:
        """Validate the wire form of an endpoint.

        Raises:
            MeshDataError: naming the offending field.
        """
        if cls is Endpoint:
            plain = _plain_endpoint(data)
            if plain is not None:
                return plain
        body = _mapping(data, where)
        hosts = _checked_list(body.get("hosts"), f"{where}.hosts", _http_host)
        ports = _port_list(body.get("ports"), f"{where}.ports")
        methods = _method_list(body.get("methods"), f"{where}.methods")
        paths = _checked_list(body.get("paths"), f"{where}.paths", _http_path)
        if cls is Endpoint:
            return _checked_endpoint(hosts, ports, methods, paths)
        return cls(hosts=hosts, ports=ports, methods=methods, paths=paths)

    @classmethod
    def from_model_dict(cls, body: Mapping[str, object]) -> Endpoint:
        """Validate the dict form (:meth:`from_dict`)."""
        return cls.from_dict(body, "Endpoint")


_ENDPOINT_FIELDS = frozenset(("hosts", "ports", "methods", "paths"))
_METHOD_BY_VALUE: Mapping[str, Method] = {method.value: method for method in Method}


def _checked_endpoint(
    hosts: list[str] | None,
    ports: list[int] | None,
    methods: list[Method] | None,
    paths: list[str] | None,
) -> Endpoint:
    """The :class:`Endpoint` of values checked already, without checking them again."""
    endpoint = object.__new__(Endpoint)
    object.__setattr__(endpoint, "hosts", hosts)
    object.__setattr__(endpoint, "ports", ports)
    object.__setattr__(endpoint, "methods", methods)
    object.__setattr__(endpoint, "paths", paths)
    object.__setattr__(endpoint, "_fields_set", _ENDPOINT_FIELDS)  # as given by keyword
    return endpoint


def _plain_endpoint(data: object) -> Endpoint | None:
    """The endpoint of wire-form ``data`` of the usual shape, or ``None`` for the full checks.

    Parsing a request is on every hook of a provider, for every policy of every relation. This
    accepts only what :meth:`Endpoint.from_dict`'s checks accept, and makes the same endpoint,
    without their per-item bookkeeping; anything else (hosts, a path of an unusual shape, a
    wrong type, a value out of range) returns ``None`` and goes through them, which also word
    the error.
    """
    if type(data) is not dict:
        return None
    body = cast("dict[str, object]", data)
    if body.get("hosts") is not None:
        return None
    try:
        return _checked_endpoint(
            None,
            _plain_list(body.get("ports"), _plain_port),
            _plain_list(body.get("methods"), _plain_method),
            _plain_list(body.get("paths"), _plain_path),
        )
    except _NotPlainError:
        return None


class _NotPlainError(Exception):
    """A value the quick paths leave to the full checks (or to JSON)."""


_Item = TypeVar("_Item")


def _plain_list(value: object, item: Callable[[object], _Item]) -> list[_Item] | None:
    if value is None:
        return None
    if type(value) is not list or len(cast("list[object]", value)) > MAX_ITEMS_PER_FIELD:
        raise _NotPlainError
    return [item(each) for each in cast("list[object]", value)]


def _plain_port(value: object) -> int:
    if type(value) is not int or not 1 <= value <= 65535:
        raise _NotPlainError
    return value


def _plain_method(value: object) -> Method:
    method = _METHOD_BY_VALUE.get(value) if type(value) is str else None
    if method is None:
        raise _NotPlainError
    return method


def _plain_path(value: object) -> str:
    if (
        type(value) is not str
        or not value
        or len(value) > MAX_STRING_LENGTH
        or not _PLAIN_PATH.fullmatch(value)
    ):
        raise _NotPlainError
    return value


def _check_relation_name(relation: object, kind: str) -> str:
    if not isinstance(relation, str) or not relation:
        raise MeshDataError(f"{kind}.relation: expected a relation name, got {relation!r}")
    return relation


@_records_fields_set
@dataclass(frozen=True, init=False)
class AppPolicy(_PydanticStyle):
    """Allow apps related over ``relation`` to reach this app through its Kubernetes Service.

    Enforced at L7 by the waypoint, so hosts, methods and paths can be restricted as well as
    ports. The traffic must go to the app's Service address (``http://<app>:<port>``).

    Attributes:
        relation: the relation endpoint name (from charmcraft.yaml); a peer relation is allowed.
        endpoints: what the related apps may reach; an empty list allows everything.
        service: the Kubernetes Service that receives the traffic, when it is not the one Juju
            creates for the app (named after the app).
    """

    relation: str
    endpoints: list[Endpoint]
    service: str | None

    _model_defaults: ClassVar[Mapping[str, object]] = {"service": None}

    def __init__(
        self,
        relation: str,
        endpoints: Sequence[Endpoint] = (),
        service: str | None = None,
    ):
        kind = type(self).__name__
        object.__setattr__(self, "relation", _check_relation_name(relation, kind))
        checked: list[Endpoint] = []
        for i, endpoint in enumerate(endpoints):
            if not isinstance(endpoint, Endpoint):  # pyright: ignore[reportUnnecessaryIsInstance]
                raise MeshDataError(
                    f"{kind}.endpoints[{i}]: expected an Endpoint, got {endpoint!r}"
                )
            checked.append(endpoint)
        object.__setattr__(self, "endpoints", checked)
        service = _opt_str(service, f"{kind}.service")
        if service is not None:
            _check_service_name(service, f"{kind}.service")
        object.__setattr__(self, "service", service)

    @classmethod
    def from_model_dict(cls: type[_Model], body: Mapping[str, object]) -> _Model:
        """Validate the dict form: relation, endpoints (dicts or Endpoints) and service."""
        kind = cls.__name__
        raw = body.get("endpoints")
        if raw is None:
            raw = []
        if not isinstance(raw, (list, tuple)):
            raise _fail(f"{kind}.endpoints", f"expected a list, got {_describe(raw)}")
        endpoints = [
            Endpoint.model_validate(item) if not isinstance(item, Endpoint) else item
            for item in cast("Sequence[object]", raw)
        ]
        make: Any = cls
        with warnings.catch_warnings():
            # pydantic's model_validate never ran Policy.__init__, so it never warned either.
            warnings.simplefilter("ignore", DeprecationWarning)
            return make(
                relation=body.get("relation"), endpoints=endpoints, service=body.get("service")
            )


@_records_fields_set
class Policy(AppPolicy):
    """Deprecated: use :class:`AppPolicy`, which this behaves exactly like."""

    def __init__(
        self,
        relation: str,
        endpoints: Sequence[Endpoint] = (),
        service: str | None = None,
    ):
        warnings.warn(
            "Policy is deprecated: use AppPolicy (same arguments) for traffic through the "
            "app's Service, or UnitPolicy for traffic straight to its pods",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(relation=relation, endpoints=endpoints, service=service)


@_records_fields_set
@dataclass(frozen=True, init=False)
class UnitPolicy(_PydanticStyle):
    """Allow apps related over ``relation`` to open connections straight to this app's pods.

    Enforced at L4 by ztunnel, which sees connections, not requests: only ports can be
    restricted. Use :class:`AppPolicy` to restrict methods, paths or hosts.

    Attributes:
        relation: the relation endpoint name (from charmcraft.yaml); a peer relation is allowed.
        ports: the pod ports that may be reached; ``None`` or empty allows every port.
    """

    relation: str
    ports: list[int] | None

    _model_defaults: ClassVar[Mapping[str, object]] = {"ports": None}

    def __init__(
        self,
        relation: str,
        ports: Sequence[int] | None = None,
        **unsupported: object,
    ):
        if unsupported:
            names = ", ".join(sorted(unsupported))
            raise UnitPolicyError(
                f"UnitPolicy(relation={relation!r}) got {names}: a unit policy is enforced at L4 "
                "by ztunnel, which can only restrict ports; use AppPolicy with Endpoint(...) to "
                "restrict methods, paths or hosts, and send the traffic through the app's Service"
            )
        object.__setattr__(self, "relation", _check_relation_name(relation, "UnitPolicy"))
        object.__setattr__(self, "ports", _port_list(ports, "UnitPolicy.ports"))


# ---------------------------------------------------------------------------------------------
# What travels over the relations
# ---------------------------------------------------------------------------------------------


@_records_fields_set
@dataclass(frozen=True)
class MeshPolicy(_PydanticStyle):
    """One access rule in mesh-agnostic form: this source may reach this target there.

    It is what consumers publish and what providers (and :class:`PolicyResourceManager`) turn
    into mesh resources. Construction validates it.

    Attributes:
        source_namespace: namespace (Juju model name) of the app allowed to send traffic.
        source_app_name: Juju app name of the sender (also its ServiceAccount name).
        target_namespace: namespace of the target.
        target_app_name: the target app.
        target_selector_labels: pod labels selecting the target (unit policies only).
        target_service: Service receiving the traffic (app policies only); defaults to the
            target app's Service.
        target_type: ``app`` (through the Service, L7) or ``unit`` (to the pods, L4).
        endpoints: what the source may reach.
    """

    source_namespace: str
    source_app_name: str
    target_namespace: str
    target_app_name: str | None = None
    target_selector_labels: dict[str, str] | None = None
    target_service: str | None = None
    target_type: PolicyTargetType = PolicyTargetType.app
    endpoints: list[Endpoint] = field(default_factory=list[Endpoint])

    _model_defaults: ClassVar[Mapping[str, object]] = {
        "target_app_name": None,
        "target_selector_labels": None,
        "target_service": None,
        "target_type": PolicyTargetType.app,
        "endpoints": [],
    }

    def __post_init__(self) -> None:
        where = "MeshPolicy"
        _source_token(self.source_namespace, f"{where}.source_namespace")
        _source_token(self.source_app_name, f"{where}.source_app_name")
        _str(self.target_namespace, f"{where}.target_namespace")
        _opt_str(self.target_app_name, f"{where}.target_app_name")
        _opt_str(self.target_service, f"{where}.target_service")
        object.__setattr__(
            self,
            "target_selector_labels",
            _labels(self.target_selector_labels, f"{where}.target_selector_labels"),
        )
        try:
            object.__setattr__(self, "target_type", PolicyTargetType(self.target_type))
        except ValueError:
            raise _fail(
                f"{where}.target_type", f'expected "app" or "unit", got {self.target_type!r}'
            ) from None
        endpoints = list(self.endpoints)
        for i, endpoint in enumerate(endpoints):
            if not isinstance(endpoint, Endpoint):  # pyright: ignore[reportUnnecessaryIsInstance]
                raise _fail(f"{where}.endpoints[{i}]", f"expected an Endpoint, got {endpoint!r}")
        object.__setattr__(self, "endpoints", endpoints)
        self._check_target()

    def _check_target(self) -> None:
        who = f"policy from {self.source_namespace}/{self.source_app_name}"
        if self.target_type is PolicyTargetType.app:
            if not (self.target_app_name or self.target_service):
                raise MeshDataError(
                    f"{who}: an app policy needs target_app_name or target_service"
                )
            if self.target_selector_labels is not None:
                raise MeshDataError(
                    f"{who}: an app policy targets a Service and cannot have "
                    "target_selector_labels; use a unit policy to select pods"
                )
            if self.target_service is not None:
                _check_service_name(self.target_service, f"{who}: target_service")
            else:
                _check_service_name(
                    str(self.target_app_name), f"{who}: target_app_name (its Service)"
                )
            return
        if self.target_service is not None:
            raise MeshDataError(
                f"{who}: a unit policy targets pods and cannot have target_service; "
                "use an app policy for traffic through a Service"
            )
        if self.target_app_name is not None and self.target_selector_labels is not None:
            raise MeshDataError(
                f"{who}: a unit policy takes target_app_name or target_selector_labels, not both"
            )
        if self.target_app_name is None and not self.target_selector_labels:
            raise MeshDataError(
                f"{who}: a unit policy needs target_app_name or non-empty "
                "target_selector_labels; without them it has no selector, and ztunnel would "
                "apply it to every pod in the namespace"
            )
        if self.target_app_name is not None:
            _check_label_value(self.target_app_name, f"{who}: target_app_name (a pod label value)")
        for i, endpoint in enumerate(self.endpoints):
            if endpoint.restricts_beyond_ports:
                raise UnitPolicyError(
                    f"{who}, endpoints[{i}]: a unit policy is enforced at L4 by ztunnel and can "
                    "only restrict ports, not methods, paths or hosts (Istio would drop such a "
                    "rule and deny everything); use an app policy for L7 restrictions"
                )

    @property
    def source_principal(self) -> str:
        """The mesh identity (SPIFFE principal) of the source app."""
        return f"{_TRUST_DOMAIN}/ns/{self.source_namespace}/sa/{self.source_app_name}"

    def to_dict(self) -> dict[str, Any]:
        """The wire form: all eight keys, ``null`` where unset."""
        return {
            "source_namespace": self.source_namespace,
            "source_app_name": self.source_app_name,
            "target_namespace": self.target_namespace,
            "target_app_name": self.target_app_name,
            "target_selector_labels": (
                None if self.target_selector_labels is None else dict(self.target_selector_labels)
            ),
            "target_service": self.target_service,
            "target_type": self.target_type.value,
            "endpoints": [endpoint.to_dict() for endpoint in self.endpoints],
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "policy") -> MeshPolicy:
        """Validate the wire form of a policy; keys this version does not know are ignored.

        Raises:
            MeshDataError: naming the offending field.
        """
        body = _mapping(data, where)
        raw_endpoints = body.get("endpoints")
        if raw_endpoints is None:
            raw_endpoints = []
        if not isinstance(raw_endpoints, list):
            raise _fail(f"{where}.endpoints", f"expected a list, got {_describe(raw_endpoints)}")
        if len(cast("list[object]", raw_endpoints)) > MAX_ENDPOINTS_PER_POLICY:
            raise _fail(
                f"{where}.endpoints",
                f"{len(cast('list[object]', raw_endpoints))} endpoints, more than the limit of "
                f"{MAX_ENDPOINTS_PER_POLICY}",
            )
        endpoints = [
            Endpoint.from_dict(item, f"{where}.endpoints[{i}]")
            for i, item in enumerate(cast("list[object]", raw_endpoints))
        ]
        target_type = body.get("target_type")
        if target_type not in ("app", "unit"):
            raise _fail(
                f"{where}.target_type", f'expected "app" or "unit", got {_describe(target_type)}'
            )
        try:
            fields: dict[str, Any] = {
                "source_namespace": _namespace_name(
                    body.get("source_namespace"), f"{where}.source_namespace"
                ),
                "source_app_name": _service_account_name(
                    body.get("source_app_name"), f"{where}.source_app_name"
                ),
                "target_namespace": _namespace_name(
                    body.get("target_namespace"), f"{where}.target_namespace"
                ),
                "target_app_name": _opt_str(
                    body.get("target_app_name"), f"{where}.target_app_name"
                ),
                "target_selector_labels": _labels(
                    body.get("target_selector_labels"), f"{where}.target_selector_labels"
                ),
                "target_service": _opt_str(body.get("target_service"), f"{where}.target_service"),
                "target_type": PolicyTargetType(target_type),
                "endpoints": endpoints,
            }
            if cls is not MeshPolicy:
                return cls(**fields)
            # The fields passed the checks above, which are those of __post_init__ or stricter
            # (a namespace or service account name is a source token); what remains is the
            # target's, which involves several fields.
            policy = object.__new__(MeshPolicy)
            for name, value in fields.items():
                object.__setattr__(policy, name, value)
            object.__setattr__(policy, "_fields_set", _MESH_POLICY_FIELDS)  # as given by keyword
            policy._check_target()
            return policy
        except MeshDataError as error:
            raise MeshDataError(f"{where}: {error}") from None

    @classmethod
    def from_model_dict(cls, body: Mapping[str, object]) -> MeshPolicy:
        """Validate the dict form; a missing ``target_type`` is ``app``, as it defaults to."""
        raw_endpoints = body.get("endpoints")
        endpoints: list[object] = []
        if isinstance(raw_endpoints, (list, tuple)):
            endpoints = [
                item.to_dict() if isinstance(item, Endpoint) else item
                for item in cast("Sequence[object]", raw_endpoints)
            ]
        target_type = body.get("target_type", PolicyTargetType.app)
        policy = cls.from_dict(
            {
                **body,
                "target_type": target_type.value
                if isinstance(target_type, PolicyTargetType)
                else target_type,
                "endpoints": endpoints
                if isinstance(raw_endpoints, (list, tuple))
                else raw_endpoints,
            },
            "MeshPolicy",
        )
        # Each nested endpoint remembers the keys it was given, as pydantic's nested models do.
        originals = (
            list(cast("Sequence[object]", raw_endpoints))
            if isinstance(raw_endpoints, (list, tuple))
            else []
        )
        for endpoint, original in zip(policy.endpoints, originals, strict=True):
            if isinstance(original, Endpoint):
                given = frozenset(original.model_fields_set)
            else:
                keys = cast("Mapping[str, object]", original)
                given = frozenset(keys) & frozenset(_model_field_names(Endpoint))
            object.__setattr__(endpoint, "_fields_set", given)
        return policy


_MESH_POLICY_FIELDS = frozenset(_model_field_names(MeshPolicy))


@_records_fields_set
@dataclass(frozen=True)
class CMRData(_PydanticStyle):
    """What a sender announces across models: its real app name and model name."""

    app_name: str
    juju_model_name: str

    def __post_init__(self) -> None:
        _source_token(self.app_name, "cmr_data.app_name")
        _source_token(self.juju_model_name, "cmr_data.juju_model_name")

    def to_dict(self) -> dict[str, str]:
        """The wire form."""
        return {"app_name": self.app_name, "juju_model_name": self.juju_model_name}

    @classmethod
    def from_dict(cls, data: object) -> CMRData:
        """Validate the wire form.

        Raises:
            MeshDataError: naming the offending field.
        """
        body = _mapping(data, "cmr_data")
        return cls(
            app_name=_service_account_name(body.get("app_name"), "cmr_data.app_name"),
            juju_model_name=_namespace_name(
                body.get("juju_model_name"), "cmr_data.juju_model_name"
            ),
        )

    @classmethod
    def from_model_dict(cls, body: Mapping[str, object]) -> CMRData:
        """Validate the dict form (:meth:`from_dict`)."""
        return cls.from_dict(body)


@_records_fields_set
@dataclass(frozen=True)
class ServiceMeshProviderAppData(_PydanticStyle):
    """What the provider publishes: the labels that join the mesh, and the mesh type."""

    labels: dict[str, str]
    mesh_type: MeshType

    def __post_init__(self) -> None:
        labels = _labels(self.labels, "labels")
        if labels is None:
            # Not "no labels" (the whole model on the mesh): a consumer reading it would take
            # its pods off the mesh.
            raise _fail("labels", "expected an object of string labels, got null")
        object.__setattr__(self, "labels", labels)
        try:
            object.__setattr__(self, "mesh_type", MeshType(self.mesh_type))
        except ValueError:
            known = ", ".join(m.value for m in MeshType)
            raise _fail("mesh_type", f"expected one of {known}, got {self.mesh_type!r}") from None

    def dump(self) -> dict[str, str]:
        """The databag content: every value as JSON text."""
        return {
            _LABELS_KEY: json.dumps(self.labels),
            _MESH_TYPE_KEY: json.dumps(self.mesh_type.value),
        }

    @classmethod
    def load(cls, databag: Mapping[str, str]) -> ServiceMeshProviderAppData:
        """Parse a provider databag (values are JSON text).

        Raises:
            MeshDataError: when a value is not JSON or not of the expected type.
        """
        return cls(
            labels=cast("dict[str, str]", _json_value(databag, _LABELS_KEY)),
            mesh_type=cast("MeshType", _json_value(databag, _MESH_TYPE_KEY)),
        )

    @classmethod
    def from_model_dict(cls, body: Mapping[str, object]) -> ServiceMeshProviderAppData:
        """Validate the dict form: both ``labels`` and ``mesh_type`` are required."""
        for key in (_LABELS_KEY, _MESH_TYPE_KEY):
            if key not in body:
                raise MeshDataError(f"{key}: missing")
        return cls(
            labels=cast("dict[str, str]", body[_LABELS_KEY]),
            mesh_type=cast("MeshType", body[_MESH_TYPE_KEY]),
        )


def _json_error(error: json.JSONDecodeError) -> str:
    """``not valid JSON (<what> at character <n>)`` (json's own text may end in "at")."""
    return f"not valid JSON ({error.msg.removesuffix(' at')} at character {error.pos})"


def _json_value(databag: Mapping[str, str], key: str) -> object:
    raw = databag.get(key)
    if raw is None:
        raise MeshDataError(f"{key}: missing")
    return _load_json(raw, key, MAX_SMALL_VALUE_BYTES)


def _refuse_number(text: str) -> object:
    raise MeshDataError(
        f"a number of {len(text)} characters, more than the limit of {MAX_NUMBER_LENGTH}"
    )


def _int(text: str) -> int:
    return int(text) if len(text) <= MAX_NUMBER_LENGTH else cast("int", _refuse_number(text))


def _float(text: str) -> float:
    return float(text) if len(text) <= MAX_NUMBER_LENGTH else cast("float", _refuse_number(text))


def _constant(text: str) -> object:
    raise MeshDataError(f"{text} is not a JSON number")


def _load_json(raw: object, key: str, max_bytes: int) -> object:
    """Parse one relation data value written by the other side; only MeshDataError escapes.

    The size is checked before parsing (``max_bytes`` bytes of UTF-8), then the nesting depth
    (:data:`MAX_JSON_DEPTH`) by a linear scan, so that the parser never recurses deeply; numbers
    are bounded (:data:`MAX_NUMBER_LENGTH`) and ``NaN``/``Infinity`` refused.

    Args:
        raw: the databag value.
        key: its key, for messages.
        max_bytes: the most characters accepted.

    Raises:
        MeshDataError: naming the key and what is wrong, or the limit exceeded.
    """
    if not isinstance(raw, str):
        raise _fail(key, f"expected JSON text, got {_describe(raw)}")
    # Characters first: cheap, and never more than the bytes.
    if len(raw) > max_bytes or len(raw.encode("utf-8", "surrogatepass")) > max_bytes:
        raise _fail(key, f"more than the limit of {max_bytes} bytes")
    outside_strings = _JSON_STRING.sub('""', raw)
    depth = deepest = 0
    for bracket in _JSON_NOT_BRACKET.sub("", outside_strings):
        depth += 1 if bracket in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_JSON_DEPTH:
                raise _fail(key, f"nested deeper than the limit of {MAX_JSON_DEPTH}")
    if not _JSON_NUMBER_RUN.search(outside_strings):
        # No number longer than the limit and no NaN or Infinity: the checks of the hooks below
        # cannot fail, and the C parser gives the same value without calling back per number.
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            pass  # invalid: the parse below words the error
    try:
        return json.loads(raw, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except MeshDataError as error:
        raise _fail(key, str(error)) from None
    except json.JSONDecodeError as error:
        raise _fail(key, _json_error(error)) from None
    except (ValueError, RecursionError) as error:  # pragma: no cover - the checks above bound it
        raise _fail(key, f"not valid JSON ({type(error).__name__})") from None


def _dump_policies(policies: Iterable[MeshPolicy]) -> str:
    return json.dumps([policy.to_dict() for policy in policies], separators=(",", ":"))


def parse_policies(raw: str) -> list[MeshPolicy]:
    """Parse the ``policies`` value of a consumer's databag.

    Raises:
        MeshDataError: naming what is wrong, e.g. ``policies[1].endpoints[0].ports[0]: ...``.
    """
    data = _load_json(raw, _POLICIES_KEY, MAX_POLICIES_BYTES)
    if not isinstance(data, list):
        raise _fail("policies", f"expected a list of policies, got {_describe(data)}")
    if len(cast("list[object]", data)) > MAX_POLICIES_PER_RELATION:
        raise _fail(
            "policies",
            f"{len(cast('list[object]', data))} policies, more than the limit of "
            f"{MAX_POLICIES_PER_RELATION} policies",
        )
    return [
        MeshPolicy.from_dict(item, f"policies[{i}]")
        for i, item in enumerate(cast("list[object]", data))
    ]


# ---------------------------------------------------------------------------------------------
# From declarations to MeshPolicies
# ---------------------------------------------------------------------------------------------


def build_mesh_policies(
    relation_mapping: Mapping[str, Sequence[ops.Relation]],
    target_app_name: str,
    target_namespace: str,
    policies: Sequence[AppPolicy | UnitPolicy],
    cmr_application_data: Mapping[str, CMRData] | None = None,
) -> list[MeshPolicy]:
    """Generate the MeshPolicies that implement ``policies`` for the currently related apps.

    One MeshPolicy per declared policy and per relation of the relation it names.

    Args:
        relation_mapping: the charm's relations, for example ``self.model.relations``.
        target_app_name: the app that receives the traffic, for example ``self.app.name``.
        target_namespace: its namespace, for example ``self.model.name``.
        policies: the declared AppPolicy and UnitPolicy objects.
        cmr_application_data: for cross-model apps, their local alias mapped to the app and
            model names they announced over ``cross_model_mesh``.

    Raises:
        MeshDataError: when a policy names a relation the charm does not declare.
    """
    cmr = cmr_application_data or {}
    result: list[MeshPolicy] = []
    for policy in policies:
        try:
            relations = relation_mapping[policy.relation]
        except KeyError:
            raise MeshDataError(
                f"{type(policy).__name__} names relation {policy.relation!r}, which this charm "
                "does not declare in charmcraft.yaml"
            ) from None
        for relation in relations:
            if relation.app is None:  # pyright: ignore[reportUnnecessaryComparison]
                continue
            source = cmr.get(relation.app.name)
            source_app, source_namespace = (
                (source.app_name, source.juju_model_name)
                if source
                else (relation.app.name, target_namespace)
            )
            result.append(
                _mesh_policy_for(
                    policy, source_app, source_namespace, target_app_name, target_namespace
                )
            )
    return result


def _mesh_policy_for(
    policy: AppPolicy | UnitPolicy,
    source_app: str,
    source_namespace: str,
    target_app: str,
    target_namespace: str,
) -> MeshPolicy:
    if isinstance(policy, UnitPolicy):
        return MeshPolicy(
            source_namespace=source_namespace,
            source_app_name=source_app,
            target_namespace=target_namespace,
            target_app_name=target_app,
            target_type=PolicyTargetType.unit,
            endpoints=[Endpoint(ports=policy.ports)] if policy.ports else [],
        )
    return MeshPolicy(
        source_namespace=source_namespace,
        source_app_name=source_app,
        target_namespace=target_namespace,
        target_app_name=target_app,
        target_service=policy.service,
        target_type=PolicyTargetType.app,
        endpoints=list(policy.endpoints),
    )


# ---------------------------------------------------------------------------------------------
# Kubernetes: only through the pod's service account
# ---------------------------------------------------------------------------------------------

#: Where Kubernetes mounts a pod's service account (token, CA certificate, namespace).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubernetesUnavailableError(RuntimeError):
    """The library is not running in a Kubernetes pod: it has no service account to act as.

    The library never reads a kubeconfig file: a charm runs in a pod, and outside one (a unit
    test, a developer's machine) a kubeconfig would point at whatever cluster it names. Tests
    use :func:`use_kubernetes_client` instead.
    """


# The client that use_kubernetes_client() put in place; [None] means "no Kubernetes at all".
_client_override: list[Client | None] = []


@contextlib.contextmanager
def use_kubernetes_client(client: Client | None) -> Generator[None, None, None]:
    """Route the library's own Kubernetes calls through ``client`` while the block runs (tests).

    ``ServiceMeshConsumer`` then uses ``client`` instead of the pod's service account. With
    ``None`` the library makes no Kubernetes call at all: the consumer publishes its requests as
    usual but puts no labels and reports nothing about them. Use it around ``ops.testing`` runs::

        with use_kubernetes_client(None):
            state_out = ctx.run(ctx.on.leader_elected(), state_in)

    Objects given a client explicitly (``PolicyResourceManager``, ``reconcile_charm_labels``,
    an assigned ``ServiceMeshConsumer._lightkube_client``) keep using it.
    """
    _client_override.append(client)
    try:
        yield
    finally:
        _client_override.pop()


def _kubernetes_switched_off() -> bool:
    return bool(_client_override) and _client_override[-1] is None


def in_cluster_client(namespace: str, field_manager: str) -> Client:
    """A client acting as the pod's service account (or the one :func:`use_kubernetes_client` set).

    Raises:
        KubernetesUnavailableError: not in a Kubernetes pod (no service account token, or no
            ``KUBERNETES_SERVICE_HOST``), naming what is missing.
    """
    if _client_override and _client_override[-1] is not None:
        return _client_override[-1]
    import os

    token = os.path.join(SERVICE_ACCOUNT_DIR, "token")
    if not os.path.isfile(token) or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise KubernetesUnavailableError(
            f"not running in a Kubernetes pod (no service account token at {token}, or no "
            "KUBERNETES_SERVICE_HOST); the library only acts as the pod's service account "
            "(in unit tests, wrap the run in use_kubernetes_client(None))"
        )
    from lightkube import Client, KubeConfig
    from lightkube.core.exceptions import ConfigError

    try:
        config = KubeConfig.from_service_account(SERVICE_ACCOUNT_DIR)
    except ConfigError as error:
        raise KubernetesUnavailableError(
            f"cannot use the pod's service account: {error}"
        ) from None
    return Client(config, namespace=namespace, field_manager=field_manager)


# ---------------------------------------------------------------------------------------------
# Consumer
# ---------------------------------------------------------------------------------------------

#: The ConfigMap name of the pydantic-based releases, as a template (``app_name``).
label_configmap_name_template = "juju-service-mesh-{app_name}-labels"


def label_configmap_name(app_name: str) -> str:
    """The ConfigMap in which the consumer remembers the labels it put on its objects."""
    return label_configmap_name_template.format(app_name=app_name)


def get_data_from_cmr_relation(cmr_relations: Iterable[ops.Relation]) -> dict[str, CMRData]:
    """What the remote apps of ``cross_model_mesh`` relations announced, by their local name.

    Relations without ``cmr_data`` are skipped; invalid ``cmr_data`` is logged and skipped.
    """
    result: dict[str, CMRData] = {}
    for relation in cmr_relations:
        if relation.app is None:  # pyright: ignore[reportUnnecessaryComparison]
            continue
        databag = relation.data[relation.app]
        if _CMR_DATA_KEY not in databag:
            continue
        try:
            result[relation.app.name] = CMRData.from_dict(_json_value(databag, _CMR_DATA_KEY))
        except MeshDataError as error:
            logger.warning("ignoring cmr_data from %s: %s", relation.app.name, error)
    return result


class ServiceMeshConsumer(ops.Object):
    """Join a service mesh and request access rules for the apps related to this one.

    Args:
        charm: the charm instantiating this object.
        mesh_relation_name: the ``service_mesh`` relation (requires, limit 1).
        cross_model_mesh_requires_name: the ``cross_model_mesh`` relation this app requires
            (it sends traffic to apps in other models).
        cross_model_mesh_provides_name: the ``cross_model_mesh`` relation this app provides
            (it receives traffic from apps in other models).
        policies: who may reach this app, one entry per relation that should grant access.
        auto_join: put the mesh labels on the app's StatefulSet pod template and Service
            (needs ``juju trust``). Turning it off later removes the labels it had put.

    Raises:
        MeshDataError: when the charm does not declare ``mesh_relation_name``, or a policy
            names a relation that it does not declare.
    """

    _stored = ops.StoredState()

    def __init__(
        self,
        charm: ops.CharmBase,
        mesh_relation_name: str = "service-mesh",
        cross_model_mesh_requires_name: str = "require-cmr-mesh",
        cross_model_mesh_provides_name: str = "provide-cmr-mesh",
        policies: Sequence[AppPolicy | UnitPolicy] | None = None,
        auto_join: bool = True,
    ):
        super().__init__(charm, mesh_relation_name)
        self._charm = charm
        self._mesh_relation_name = mesh_relation_name
        self._cmr_requires_name = cross_model_mesh_requires_name
        self._cmr_provides_name = cross_model_mesh_provides_name
        self._auto_join = auto_join
        self.policies: list[AppPolicy | UnitPolicy] = list(policies or [])
        self._lightkube_client: Client | None = None
        self._stored.set_default(
            labels_reconciled="", label_error="", label_status_shown=False, logged=""
        )

        declared = charm.meta.relations
        if mesh_relation_name not in declared:
            raise MeshDataError(
                f"ServiceMeshConsumer needs relation {mesh_relation_name!r} (requires, interface "
                "service_mesh, limit 1), which charmcraft.yaml does not declare (declared: "
                f"{', '.join(sorted(declared)) or 'none'})"
            )
        for policy in self.policies:
            if policy.relation not in declared:
                raise MeshDataError(
                    f"{type(policy).__name__} names relation {policy.relation!r}, which "
                    f"charmcraft.yaml does not declare (declared: {', '.join(sorted(declared))})"
                )

        on = charm.on
        update = self._on_update
        for event in (on.leader_elected, on.upgrade_charm):
            self.framework.observe(event, update)
        mesh = on[mesh_relation_name]
        for event in (mesh.relation_created, mesh.relation_changed, mesh.relation_broken):
            self.framework.observe(event, update)
        for name in sorted({policy.relation for policy in self.policies}):
            self.framework.observe(on[name].relation_created, update)
            self.framework.observe(on[name].relation_broken, update)
        if cross_model_mesh_provides_name in declared:
            cmr = on[cross_model_mesh_provides_name]
            for event in (cmr.relation_created, cmr.relation_changed, cmr.relation_broken):
                self.framework.observe(event, update)
        if cross_model_mesh_requires_name in declared:
            self.framework.observe(on[cross_model_mesh_requires_name].relation_created, update)
        self.framework.observe(on.update_status, self._on_update_status)
        self.framework.observe(on.collect_app_status, self._on_collect_app_status)

    # -- public API ---------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """Whether the mesh relation exists with a remote app (as the deployed releases say).

        ``True`` from the relation's creation on, before the provider has published anything;
        ``False`` during and after its relation-broken. :attr:`mesh_ready` also asks for the
        provider's data.
        """
        relation = self._charm.model.get_relation(self._mesh_relation_name)
        return relation is not None and relation.app is not None  # pyright: ignore[reportUnnecessaryComparison]

    @property
    def mesh_ready(self) -> bool:
        """Whether a mesh is related *and* has published valid labels and mesh type."""
        return self._provider_data() is not None

    def labels(self) -> dict[str, str]:
        """The labels a pod (and Service) needs to join the mesh; empty when there is none.

        Charms that create their own workloads (podspec, custom resources) apply these: every
        label the provider published (a sidecar mesh's ``istio-injection`` too), valid as
        Kubernetes labels, as the deployed releases return them. What the charm puts is its
        choice; with ``auto_join`` the library itself puts only :data:`MESH_LABEL_KEYS`.
        """
        data = self._provider_data()
        return dict(data.labels) if data is not None else {}

    def mesh_type(self) -> MeshType | None:
        """The type of the related mesh, or ``None`` when there is none."""
        data = self._provider_data()
        return data.mesh_type if data else None

    @property
    def lightkube_client(self) -> Client:
        """The Kubernetes client this object uses: the pod's service account, made on first use.

        Tests use :func:`use_kubernetes_client`; assigning ``_lightkube_client`` before the
        first use also still works, as in the deployed releases.

        Raises:
            KubernetesUnavailableError: not in a Kubernetes pod.
        """
        if self._lightkube_client is None:
            app, model = self._charm.app.name, self._charm.model.name
            self._lightkube_client = in_cluster_client(model, f"{app}-{model}")
            _quiet_http_client_logs()
        return self._lightkube_client

    def update_service_mesh(self) -> None:
        """Publish this app's requests and, with ``auto_join``, converge its mesh labels.

        Call it after changing :attr:`policies`. Only the leader acts.
        """
        if not self._charm.unit.is_leader():
            return
        self._publish_cmr_data()
        relation = self._charm.model.get_relation(self._mesh_relation_name)
        if relation is not None:
            _write_if_changed(
                relation.data[self._charm.app],
                {_POLICIES_KEY: _dump_policies(self.mesh_policies())},
            )
        self._reconcile_labels()

    def mesh_policies(self) -> list[MeshPolicy]:
        """The requests this app publishes: :attr:`policies` applied to its current relations."""
        return build_mesh_policies(
            self._charm.model.relations,
            self._charm.app.name,
            self._charm.model.name,
            self.policies,
            self._cmr_application_data(),
        )

    # -- internals ------------------------------------------------------------------------------

    def _on_update(self, event: ops.EventBase) -> None:
        if isinstance(event, ops.LeaderElectedEvent):
            # What this unit remembers putting is stale now: another leader may have changed
            # the labels since (removed them with the mesh relation, say). Check once.
            self._stored.labels_reconciled = ""
        self.update_service_mesh()

    def _on_update_status(self, _: ops.EventBase) -> None:
        # Retry only what failed before: a healthy consumer makes no API call on update-status.
        if self._stored.label_error and self._charm.unit.is_leader():
            self._reconcile_labels()

    def _on_collect_app_status(self, event: ops.CollectStatusEvent) -> None:
        if self._stored.label_error:
            event.add_status(ops.BlockedStatus(str(self._stored.label_error)))
            self._stored.label_status_shown = True
        elif self._stored.label_status_shown:
            # Juju keeps the last app status: replace the problem once it is solved, and
            # otherwise leave the app status to the charm.
            event.add_status(ops.ActiveStatus())
            self._stored.label_status_shown = False

    def _provider_data(self) -> ServiceMeshProviderAppData | None:
        data, _ = self._read_provider()
        return data

    def _read_provider(self) -> tuple[ServiceMeshProviderAppData | None, str]:
        """The provider's data, or why it cannot be used (``""``: no provider, or nothing yet)."""
        relation = self._charm.model.get_relation(self._mesh_relation_name)
        if relation is None or relation.app is None:  # pyright: ignore[reportUnnecessaryComparison]
            return None, ""
        try:
            databag = relation.data[relation.app]
            if not databag:
                return None, ""
            return ServiceMeshProviderAppData.load(databag), ""
        except Exception as error:  # whatever the provider wrote, it fails no hook
            reason = error if isinstance(error, MeshDataError) else type(error).__name__
            return None, f"ignoring the data of {relation.app.name}: {reason}"

    def _cmr_application_data(self) -> dict[str, CMRData]:
        mapping, notes = self._cross_model_sources()
        self._log_once("cmr", notes)
        return mapping

    def _cross_model_sources(self) -> tuple[dict[str, CMRData], list[str]]:
        """Which related apps are who, across models, and what was refused (for the log).

        A claim counts only on a relation that really crosses models; a claim of an identity
        in this model, or of one that another relation claims too, is refused.
        """
        claims: dict[str, CMRData] = {}
        notes: list[str] = []
        for relation in self._charm.model.relations.get(self._cmr_provides_name, []):
            app = relation.app
            if app is None:  # pyright: ignore[reportUnnecessaryComparison]
                continue
            try:
                raw = relation.data[app].get(_CMR_DATA_KEY)
                if raw is None:
                    continue
                if not self._crosses_models(relation):
                    notes.append(
                        f"ignoring cmr_data from {app.name}: it is in this model, where Juju "
                        "names it"
                    )
                    continue
                claim = CMRData.from_dict(_load_json(raw, _CMR_DATA_KEY, MAX_SMALL_VALUE_BYTES))
            except Exception as error:  # whatever the other side wrote, it fails no hook
                reason = error if isinstance(error, MeshDataError) else type(error).__name__
                notes.append(f"ignoring cmr_data from {app.name}: {reason}")
                continue
            if claim.juju_model_name == self._charm.model.name:
                notes.append(
                    f"refused cmr_data from {app.name}: it claims {claim.app_name} in this model"
                )
                continue
            claims[app.name] = claim
        by_identity: dict[tuple[str, str], list[str]] = {}
        for alias, claim in claims.items():
            by_identity.setdefault((claim.juju_model_name, claim.app_name), []).append(alias)
        result: dict[str, CMRData] = {}
        for (model, app_name), aliases in sorted(by_identity.items()):
            if len(aliases) > 1:
                notes.append(
                    f"refused cmr_data: {app_name} in model {model} is claimed by "
                    f"{', '.join(sorted(aliases))}"
                )
                continue
            result[aliases[0]] = claims[aliases[0]]
            notes.append(f"cross-model source: {aliases[0]} is {app_name} in model {model}")
        return result, notes

    def _crosses_models(self, relation: ops.Relation) -> bool:
        """Whether Juju says the remote app of ``relation`` is in another model."""
        try:
            return relation.remote_model.uuid != self._charm.model.uuid
        except ops.ModelError:
            # Juju before 3.6.2 cannot tell; an app behind an offer appears under an alias
            # that no app in this model can have.
            return bool(_CROSS_MODEL_ALIAS.match(relation.app.name))

    def _log_once(self, topic: str, notes: Sequence[str]) -> None:
        """Log ``notes`` when they differ from the last ones logged about ``topic``."""
        logged = cast("dict[str, str]", json.loads(str(self._stored.logged) or "{}"))
        digest = hashlib.sha256("\n".join(notes).encode("utf-8", "replace")).hexdigest()[:16]
        if logged.get(topic) == digest:
            return
        for note in notes:
            logger.warning("service mesh: %s", note)
        self._stored.logged = json.dumps({**logged, topic: digest}, sort_keys=True)

    def _publish_cmr_data(self) -> None:
        relations = self._charm.model.relations.get(self._cmr_requires_name, [])
        if not relations:
            return
        own = CMRData(app_name=self._charm.app.name, juju_model_name=self._charm.model.name)
        for relation in relations:
            _write_if_changed(
                relation.data[self._charm.app], {_CMR_DATA_KEY: json.dumps(own.to_dict())}
            )

    def _reconcile_labels(self) -> None:
        # With auto_join off, the wanted labels are none: labels put earlier (found through the
        # ConfigMap, not through this unit's memory, which a pod restart wipes) are removed.
        wanted: dict[str, str] = {}
        if self._auto_join:
            data, problem = self._read_provider()
            self._log_once("provider", [problem] if problem else [])
            if problem:
                return  # keep the labels as they are: unusable data must not take the app off
            if data is not None:
                wanted = {k: v for k, v in data.labels.items() if k in MESH_LABEL_KEYS}
                problem = _mesh_label_problem(wanted, self._charm.model.name)
                self._log_once("provider-labels", [problem] if problem else [])
                if problem:
                    return  # keep the labels as they are (see _read_provider)
        fingerprint = json.dumps(wanted, sort_keys=True)
        if fingerprint == self._stored.labels_reconciled and not self._stored.label_error:
            return  # converged already in an earlier hook: no API call
        # A client made here for the pod's service account is closed once the labels are done:
        # the hook leaves no connection open. One given by the charm or a test is left alone.
        made_here = self._lightkube_client is None and not _client_override
        client = self._label_client(wanted)
        if client is None:
            return
        try:
            self._put_labels(client, wanted, fingerprint)
        finally:
            if made_here and self._lightkube_client is not None:
                self._lightkube_client.close()
                self._lightkube_client = None

    def _put_labels(self, client: Client, wanted: Mapping[str, str], fingerprint: str) -> None:
        app = self._charm.app.name
        from lightkube import ApiError

        try:
            reconcile_charm_labels(
                client,
                app,
                self._charm.model.name,
                label_configmap_name(app),
                wanted,
            )
        except ApiError as error:
            code = error.status.code
            put_some = self._stored.labels_reconciled not in ("", "{}")
            if code == 403 and not wanted and not put_some:
                # Not trusted, and nothing to put; as far as this unit knows it put nothing either.
                logger.debug("service mesh labels: not trusted, and none wanted")
            else:
                if code == 403:
                    hint = f"run `juju trust {app} --scope=cluster`"
                else:
                    said = _display_text(error.status.message or "", 120, quote=False)
                    hint = f"Kubernetes said {code}: {said}"
                # Labels it put while trusted stay until they can be removed.
                verb = (
                    f"put the mesh labels on {app}"
                    if wanted
                    else f"remove the mesh labels from {app}"
                )
                self._label_failed(f"cannot {verb}: {hint}")
                return
        except Exception as error:
            # Connection or configuration problems: report them and retry on update-status
            # rather than failing the charm's hook.
            logger.exception("service mesh labels")
            code = _http_status_code(error)
            if code is not None:
                self._label_failed(f"cannot put the mesh labels on {app}: Kubernetes said {code}")
            else:
                said = _display_text(str(error), 120, quote=False)
                self._label_failed(f"cannot reach Kubernetes to label {app}: {said}")
            return
        self._stored.labels_reconciled = fingerprint
        self._stored.label_error = ""

    def _label_client(self, wanted: Mapping[str, str]) -> Client | None:
        """The client to label with; ``None`` when there is none (and why was reported)."""
        if self._lightkube_client is None and _kubernetes_switched_off():
            logger.debug("service mesh labels: Kubernetes switched off (use_kubernetes_client)")
            return None
        try:
            return self.lightkube_client
        except KubernetesUnavailableError as error:
            if wanted:
                self._label_failed(
                    f"cannot put the mesh labels on {self._charm.app.name}: {error}"
                )
            else:
                logger.debug("service mesh labels: none wanted, and %s", error)
            return None

    def _label_failed(self, message: str) -> None:
        logger.error("service mesh labels: %s", message)
        self._stored.label_error = message
        self._stored.labels_reconciled = ""


def _quiet_http_client_logs() -> None:
    """Keep lightkube's HTTP client from logging every request at INFO (a juju-log call each).

    Only loggers the charm left unconfigured are changed.
    """
    for name in ("httpx", "httpcore", "httpx2", "httpcore2"):
        http_logger = logging.getLogger(name)
        if http_logger.level == logging.NOTSET:
            http_logger.setLevel(logging.WARNING)


def _write_if_changed(databag: ops.RelationDataContent, values: Mapping[str, str]) -> None:
    for key, value in values.items():
        if databag.get(key) != value:
            databag[key] = value


# ---------------------------------------------------------------------------------------------
# Provider
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelationRequest:
    """What one related app asked for over the mesh relation.

    Attributes:
        relation_id: the Juju relation id.
        app_name: the related app (its name in this model).
        policies: the requested policies; empty when ``error`` is set.
        error: why the app's data was refused, or ``None``.
    """

    relation_id: int
    app_name: str | None
    policies: list[MeshPolicy]
    error: str | None = None


class ServiceMeshProvider(ops.Object):
    """Provide a service mesh: publish what joining takes and read what related apps request.

    Args:
        charm: the charm instantiating this object.
        labels: the labels a pod (and Service) needs to join the mesh, e.g.
            ``{"istio.io/dataplane-mode": "ambient"}``. ``{}`` when the whole model is on the
            mesh (consumers then remove the labels they had put).
        mesh_type: the type of this mesh.
        mesh_relation_name: the ``service_mesh`` relation (provides).

    Construct it in the charm's ``__init__`` before observing the mesh relation's events
    yourself: its relation-changed handler reads the changed request, and handlers run in the
    order they were registered.
    """

    _stored = ops.StoredState()

    def __init__(
        self,
        charm: ops.CharmBase,
        labels: Mapping[str, str],
        mesh_type: MeshType = MeshType.istio,
        mesh_relation_name: str = "service-mesh",
    ):
        super().__init__(charm, mesh_relation_name)
        self._charm = charm
        self._relation_name = mesh_relation_name
        self._app_data = ServiceMeshProviderAppData(labels=dict(labels), mesh_type=mesh_type)
        # What each relation requested, as last read: Juju runs relation-changed after every
        # change of a remote databag, so a hook reads only the databags that changed (one
        # relation-get each) instead of every relation's on every hook.
        self._stored.set_default(published={}, requests={})
        mesh = charm.on[mesh_relation_name]
        self.framework.observe(mesh.relation_changed, self._on_relation_changed)
        self.framework.observe(mesh.relation_broken, self._on_relation_broken)
        self.framework.observe(mesh.relation_created, self._on_update)
        self.framework.observe(charm.on.leader_elected, self._on_update)
        # As the deployed releases do: labels that depend on config are republished at once.
        self.framework.observe(charm.on.config_changed, self._on_update)
        self.framework.observe(charm.on.update_status, self._on_update_status)

    def _on_update(self, _: ops.EventBase) -> None:
        self.update_relations()

    def _on_relation_changed(self, event: ops.RelationChangedEvent) -> None:
        self._read_policies(event.relation)

    def _on_relation_broken(self, event: ops.RelationBrokenEvent) -> None:
        cache = cast("dict[str, str | None]", self._stored.requests)
        if str(event.relation.id) in cache:
            self._stored.requests = {k: v for k, v in cache.items() if k != str(event.relation.id)}

    def _read_policies(self, relation: ops.Relation) -> str | None:
        try:
            raw = relation.data[relation.app].get(_POLICIES_KEY)
        except Exception as error:  # whatever the consumer wrote, it fails no hook
            raw = _UNREADABLE + type(error).__name__
        if raw is not None and len(raw) > MAX_POLICIES_BYTES:
            # Remember no more than what parsing reads: enough to be refused for its size.
            raw = raw[: MAX_POLICIES_BYTES + 1]
        cache = cast("dict[str, str | None]", self._stored.requests)
        key = str(relation.id)
        if key not in cache or cache[key] != raw:
            self._stored.requests = {**cache, key: raw}
        return raw

    def _on_update_status(self, _: ops.EventBase) -> None:
        if self._stored.published and not self._charm.unit.is_leader():
            self._stored.published = {}

    def update_relations(self, labels: Mapping[str, str] | None = None) -> None:
        """Publish the labels and mesh type to every related app (leader only).

        What was published is remembered per relation, so a call that would change nothing
        writes nothing.

        Args:
            labels: labels to publish from now on instead of those given to the constructor,
                e.g. the per-app labels while the namespace cannot be put on the mesh.
        """
        if labels is not None:
            self._app_data = ServiceMeshProviderAppData(
                labels=dict(labels), mesh_type=self._app_data.mesh_type
            )
        if not self._charm.unit.is_leader():
            # Forget what was published (also on update-status): when this unit leads again,
            # another leader may have written since, so it must publish everything once.
            if self._stored.published:
                self._stored.published = {}
            return
        content = self._app_data.dump()
        fingerprint = json.dumps(content, sort_keys=True)
        published = cast("dict[str, str]", self._stored.published)
        current: dict[str, str] = {}
        for relation in self._charm.model.relations.get(self._relation_name, []):
            key = str(relation.id)
            if published.get(key) != fingerprint:
                relation.data[self._charm.app].update(content)
            current[key] = fingerprint
        if current != published:
            self._stored.published = current

    def relation_requests(self) -> list[RelationRequest]:
        """What each related app requests; a relation whose data is invalid carries the reason."""
        requests: list[RelationRequest] = []
        for relation in self._charm.model.relations.get(self._relation_name, []):
            app = relation.app
            if app is None:  # pyright: ignore[reportUnnecessaryComparison]
                continue
            cache = cast("dict[str, str | None]", self._stored.requests)
            key = str(relation.id)
            raw = cache[key] if key in cache else self._read_policies(relation)
            if raw is None:
                requests.append(RelationRequest(relation.id, app.name, []))
                continue
            try:
                if raw.startswith(_UNREADABLE):
                    raise MeshDataError(f"policies: cannot be read ({raw[len(_UNREADABLE) :]})")
                policies = parse_policies(raw)
            except Exception as error:  # parse_policies raises only MeshDataError; be sure
                reason = str(error) if isinstance(error, MeshDataError) else type(error).__name__
                requests.append(RelationRequest(relation.id, app.name, [], reason))
                continue
            requests.append(RelationRequest(relation.id, app.name, policies))
        return requests

    def requests_fingerprint(self) -> str | None:
        """A digest of what :meth:`relation_requests` would parse now, or ``None``.

        Equal fingerprints mean the same relations, related apps and requested policies (the
        same text), so what a provider derives from :meth:`relation_requests` alone is the same
        too: it may skip deriving it again. ``None`` when a relation's request has not been read
        yet (this method reads no databag).
        """
        cache = cast("dict[str, str | None]", self._stored.requests)
        seen: list[tuple[int, str, str | None]] = []
        for relation in self._charm.model.relations.get(self._relation_name, []):
            app = relation.app
            if app is None:  # pyright: ignore[reportUnnecessaryComparison]
                continue
            key = str(relation.id)
            if key not in cache:
                return None
            seen.append((relation.id, app.name, cache[key]))
        return hashlib.sha256(json.dumps(seen).encode("utf-8", "surrogatepass")).hexdigest()

    def rejected_relations(self) -> list[RelationRequest]:
        """The relations whose data could not be used, with the reason."""
        return [request for request in self.relation_requests() if request.error]

    def mesh_info(self) -> list[MeshPolicy]:
        """Every valid policy requested by the related apps (invalid relations are skipped)."""
        return [policy for request in self.relation_requests() for policy in request.policies]


# ---------------------------------------------------------------------------------------------
# Kubernetes: the consumer's own labels
# ---------------------------------------------------------------------------------------------


def reconcile_charm_labels(
    client: Client,
    app_name: str,
    namespace: str,
    label_configmap_name: str,
    labels: Mapping[str, str],
) -> None:
    """Converge the labels this function manages on a charm's pod template and Service.

    Each label goes where Istio reads it: ``istio.io/dataplane-mode`` on the pod template only,
    ``istio.io/use-waypoint`` and ``istio.io/use-waypoint-namespace`` on the Service only, any
    other label on both. The labels last set are remembered in a ConfigMap (data key ``labels``,
    a JSON object), so that a later call removes exactly those it no longer wants (from wherever
    they still are). A label whose value someone else changed since is left alone, and labels
    never set here are never touched. Objects are only written when something differs.

    Args:
        client: the Kubernetes client.
        app_name: the app; its StatefulSet and Service carry its name.
        namespace: the app's namespace (Juju model name).
        label_configmap_name: the ConfigMap that remembers the managed labels.
        labels: the labels wanted now; ``{}`` removes every label managed here.

    Raises:
        lightkube.ApiError: when Kubernetes refuses (e.g. 403 without ``juju trust``).
    """
    from lightkube import ApiError
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.apps_v1 import StatefulSet
    from lightkube.resources.core_v1 import ConfigMap, Service
    from lightkube.types import PatchType

    api: Any = client  # lightkube's patch overloads are only partly typed
    wanted = dict(labels)
    try:
        configmap = api.get(ConfigMap, label_configmap_name, namespace=namespace)
    except ApiError as error:
        if error.status.code != 404:
            raise
        configmap = None
    data: dict[str, str] = dict((configmap.data if configmap is not None else None) or {})
    previous = _remembered_labels(data, _LABELS_KEY, label_configmap_name)
    # What each object carries because this function put it there; older records say only
    # ``labels``, for both objects.
    owned_before = {
        kind: _remembered_labels(data, f"{_OWNED_KEY}.{kind}", label_configmap_name, previous)
        for kind in ("statefulset", "service")
    }

    if not wanted and not any(owned_before.values()):
        return  # nothing was put, nothing is wanted

    statefulset = api.get(StatefulSet, app_name, namespace=namespace)
    template = statefulset.spec.template if statefulset.spec else None
    pod_labels: dict[str, str] = (
        template.metadata.labels if template and template.metadata else None
    ) or {}
    patch, owned_pods = _label_patch(
        pod_labels, owned_before["statefulset"], _without(wanted, _SERVICE_ONLY_LABELS)
    )
    if patch:
        api.patch(
            StatefulSet,
            app_name,
            {"spec": {"template": {"metadata": {"labels": patch}}}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
    service = api.get(Service, app_name, namespace=namespace)
    service_labels: dict[str, str] = (service.metadata.labels if service.metadata else None) or {}
    patch, owned_service = _label_patch(
        service_labels, owned_before["service"], _without(wanted, _POD_ONLY_LABELS)
    )
    if patch:
        api.patch(
            Service,
            app_name,
            {"metadata": {"labels": patch}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )

    body = {
        _LABELS_KEY: json.dumps({**owned_service, **owned_pods}, sort_keys=True),
        f"{_OWNED_KEY}.statefulset": json.dumps(owned_pods, sort_keys=True),
        f"{_OWNED_KEY}.service": json.dumps(owned_service, sort_keys=True),
    }
    if configmap is not None and all(data.get(key) == value for key, value in body.items()):
        return
    if configmap is None:
        api.create(
            ConfigMap(
                metadata=ObjectMeta(name=label_configmap_name, namespace=namespace), data=body
            ),
            namespace=namespace,
        )
    else:
        api.patch(
            ConfigMap,
            label_configmap_name,
            {"data": body},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )


def _remembered_labels(
    data: Mapping[str, str], key: str, configmap: str, default: Mapping[str, str] | None = None
) -> dict[str, str]:
    if key not in data:
        return dict(default or {})
    try:
        return _labels(_load_json(data[key], key, MAX_SMALL_VALUE_BYTES), key) or {}
    except MeshDataError:
        logger.warning("ConfigMap %s holds invalid %s; starting over", configmap, key)
        return {}


def _without(labels: Mapping[str, str], keys: frozenset[str]) -> dict[str, str]:
    return {key: value for key, value in labels.items() if key not in keys}


def _label_patch(
    current: Mapping[str, str], owned: Mapping[str, str], wanted: Mapping[str, str]
) -> tuple[dict[str, str | None], dict[str, str]]:
    """A merge patch of labels, and the labels owned once it is applied.

    A label is owned when this function put it and it still has the value put. Only owned
    labels are changed or removed: a label that was there before, or that someone changed
    since, is theirs, and is neither overwritten nor removed.
    """
    patch: dict[str, str | None] = {}
    now_owned: dict[str, str] = {}
    for key, value in wanted.items():
        mine = key in owned and current.get(key) == owned[key]
        if key in current and not mine:
            continue  # someone else's label
        if current.get(key) != value:
            patch[key] = value
        now_owned[key] = value
    for key, value in owned.items():
        if key not in wanted and current.get(key) == value:
            patch[key] = None
    return patch, now_owned


# ---------------------------------------------------------------------------------------------
# Istio AuthorizationPolicies: pure builders
# ---------------------------------------------------------------------------------------------


def _dns_name(text: str) -> str:
    # No dots: relation data may hold any text, and a dot next to a dash or another dot would
    # make an invalid DNS-1123 name. Juju names never contain dots, so real names are unchanged.
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower())
    name = re.sub(r"-{2,}", "-", name)
    return name.strip("-.")


def authorization_policy_name(policy: MeshPolicy) -> str:
    """A stable, valid name for the AuthorizationPolicy of ``policy``.

    Readable (target, type, source), and unique per source, target and rules thanks to a digest
    of the whole policy, so the same request has the same name on every reconcile.
    """
    digest = hashlib.sha256(
        json.dumps(policy.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()[:10]
    target = policy.target_service or policy.target_app_name or "all"
    readable = _dns_name(
        f"{target}-{policy.target_type.value}-from-{policy.source_app_name}-{policy.source_namespace}"
    )
    return f"{readable[: _MAX_NAME_LENGTH - len(digest) - 1].rstrip('-.')}-{digest}"


def _operation(endpoint: Endpoint, unit: bool) -> dict[str, list[str]]:
    operation: dict[str, list[str]] = {}
    if endpoint.ports:
        operation["ports"] = [str(port) for port in endpoint.ports]
    if unit:
        return operation
    if endpoint.hosts:
        operation["hosts"] = list(endpoint.hosts)
    if endpoint.methods:
        operation["methods"] = [method.value for method in endpoint.methods]
    if endpoint.paths:
        operation["paths"] = list(endpoint.paths)
    return operation


def build_authorization_policy(
    policy: MeshPolicy,
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Istio AuthorizationPolicy (ALLOW) manifest that implements ``policy``.

    App policies target the Service (``targetRefs``) and are enforced by its waypoint; unit
    policies select the pods and are enforced by ztunnel, ports only.

    Args:
        policy: the policy to implement.
        labels: labels for the object's metadata (ownership).
        annotations: annotations for the object's metadata (e.g. who asked for it).

    Raises:
        UnitPolicyError: a unit policy restricting methods, paths or hosts (MeshPolicy
            validation refuses it; this guards policies built around that check).
    """
    unit = policy.target_type is PolicyTargetType.unit
    if unit and any(endpoint.restricts_beyond_ports for endpoint in policy.endpoints):
        raise UnitPolicyError(
            f"unit policy from {policy.source_app_name}: ztunnel can only restrict ports"
        )
    operations = [_operation(endpoint, unit) for endpoint in policy.endpoints]
    rule: dict[str, Any] = {"from": [{"source": {"principals": [policy.source_principal]}}]}
    # An endpoint that restricts nothing allows everything: the rule then needs no "to".
    if operations and all(operations):
        rule["to"] = [{"operation": operation} for operation in operations]
    spec: dict[str, Any] = {}
    if not unit:
        service = policy.target_service or policy.target_app_name
        spec["targetRefs"] = [{"group": "", "kind": "Service", "name": service}]
    elif policy.target_app_name:
        spec["selector"] = {"matchLabels": {"app.kubernetes.io/name": policy.target_app_name}}
    elif policy.target_selector_labels:
        spec["selector"] = {"matchLabels": dict(policy.target_selector_labels)}
    spec["rules"] = [rule]
    metadata: dict[str, Any] = {
        "name": authorization_policy_name(policy),
        "namespace": policy.target_namespace,
    }
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": f"{_AUTHZ_GROUP}/{_AUTHZ_VERSION}",
        "kind": _AUTHZ_KIND,
        "metadata": metadata,
        "spec": spec,
    }


def build_authorization_policies(
    policies: Iterable[MeshPolicy],
    *,
    labels: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """:func:`build_authorization_policy` for each policy, without duplicates."""
    manifests: dict[tuple[str, str], dict[str, Any]] = {}
    for policy in policies:
        manifest = build_authorization_policy(policy, labels=labels)
        manifests[_manifest_key(manifest)] = manifest
    return list(manifests.values())


def _manifest_key(manifest: Mapping[str, Any]) -> tuple[str, str]:
    metadata = cast("Mapping[str, Any]", manifest.get("metadata") or {})
    return str(metadata.get("namespace", "")), str(metadata.get("name", ""))


# ---------------------------------------------------------------------------------------------
# Kubernetes: owning a set of AuthorizationPolicies
# ---------------------------------------------------------------------------------------------


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    if len(value) <= _MAX_LABEL_VALUE_LENGTH:
        return value
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{value[: _MAX_LABEL_VALUE_LENGTH - 9].rstrip('-._')}-{digest}"


def get_default_labels(
    app_name: str, model_name: str, scope: str = "service-mesh"
) -> dict[str, str]:
    """Ownership labels for a :class:`PolicyResourceManager` of an app in a model."""
    return {
        "app.kubernetes.io/name": _label_value(f"{app_name}-{model_name}"),
        "kubernetes-resource-handler-scope": _label_value(scope),
    }


@functools.cache
def _authorization_policy_resource() -> type[GenericNamespacedResource]:
    import lightkube.generic_resource

    generic: Any = lightkube.generic_resource  # its ``verbs`` parameter is untyped
    return generic.create_namespaced_resource(
        _AUTHZ_GROUP, _AUTHZ_VERSION, _AUTHZ_KIND, _AUTHZ_PLURAL
    )


#: How many of its writes, then of its deletions, :meth:`PolicyResourceManager.reconcile` keeps
#: in flight at once by default.
_DEFAULT_MAX_WORKERS = 8


@dataclass(frozen=True)
class ReconcileSummary:
    """What a reconcile changed, as ``namespace/name`` lists, and how many were already right."""

    created: list[str]
    updated: list[str]
    deleted: list[str]
    unchanged: int
    #: Objects no longer wanted that were kept because the objects replacing them could not be
    #: written (LIBPATCH 20): deleting them would have left their workloads without any of
    #: the manager's policies. The next reconcile deletes them once their replacements stand.
    kept: list[str] = field(default_factory=lambda: [])

    @property
    def changed(self) -> bool:
        """Whether anything was written."""
        return bool(self.created or self.updated or self.deleted)


class PolicyResourceManager:
    """Own a set of mesh policy resources by label and converge it to the wanted set.

    Useful to charms that manage their own policies (outside a beacon-managed model, custom
    rules, apps not related to the beacon).

    Args:
        charm: the charm instantiating this object.
        lightkube_client: the Kubernetes client. It must have a ``field_manager``: objects are
            written with server-side apply.
        labels: the labels that mark the objects this manager owns; they are put on every object
            it writes and select the objects it lists. Defaults to :func:`get_default_labels`.
        logger: where to log; defaults to this module's logger.
        cluster_wide: look for owned objects across every namespace first (a cluster-wide
            list, which needs a ClusterRole; refused, it falls back to the namespaces written
            to). ``False`` lists only the model's namespace and those of the wanted objects:
            what a namespaced Role allows, and never a request Kubernetes refuses.
    """

    def __init__(
        self,
        charm: ops.CharmBase,
        lightkube_client: Client,
        labels: Mapping[str, str] | None = None,
        logger: logging.Logger | None = None,
        *,
        cluster_wide: bool = True,
    ):
        self._charm = charm
        self._client = lightkube_client
        self._cluster_wide = cluster_wide
        self.labels: dict[str, str] = (
            dict(labels) if labels else get_default_labels(charm.app.name, charm.model.name)
        )
        self.log = logger or logging.getLogger(__name__)
        #: The owned policy resources as the last :meth:`reconcile` listed them, before its own
        #: writes, status included (where Istio reports whether it enforces each one).
        self.listed: list[dict[str, Any]] = []
        _quiet_http_client_logs()

    def reconcile(
        self,
        policies: Sequence[MeshPolicy],
        mesh_type: MeshType,
        raw_policies: Sequence[Mapping[str, Any] | Any] | None = None,
        force: bool = True,
        ignore_missing: bool = True,
        on_error: Callable[[str, Exception], None] | None = None,
        *,
        take_over: bool = True,
        max_workers: int = _DEFAULT_MAX_WORKERS,
    ) -> ReconcileSummary:
        """Create what is missing, update what differs, delete what is no longer wanted.

        Nothing is written when everything is already as wanted. Creates and applies come
        first, all of them, and every one has been answered before the first deletion is sent
        (LIBPATCH 20; earlier releases deleted first). A workload that has ALLOW policies admits
        only what they match, and one that has none admits everyone: deleting first would leave
        a workload whose every policy is replaced (a changed request gets a new name) open to
        everyone until the replacements arrive. Written first, the old and the new policies
        are both in force for that moment: never more than was granted before or after.

        For the same reason an object no longer wanted is kept when it applies to the same
        workloads (the same ``targetRefs`` or ``selector`` in the same namespace) as wanted
        objects none of which could be written: it is listed in the summary's ``kept`` and
        logged, and a later reconcile deletes it once its replacements stand. An object whose
        workloads no wanted object applies to any more is always deleted. A write that Kubernetes
        refuses (admission, size) does not stop the others.

        Up to ``max_workers`` requests are in flight at once (worker threads sharing the one
        client, whose HTTP connection pool is thread-safe): each one is a round trip to the API
        server, and at a few hundred objects, one after the other, those round trips make most
        of the time. Whatever the order they finish in, ``on_error`` is called and the summary is
        filled in one deterministic order, from the calling thread: writes in the order the
        policies were given, then deletions by ``namespace/name``.

        Args:
            policies: the wanted policies.
            mesh_type: the mesh to build resources for (from ``ServiceMeshConsumer.mesh_type``).
            raw_policies: more AuthorizationPolicies to own: lightkube resource objects (a
                generic resource or a typed ``AuthorizationPolicy``, as the deployed releases
                took) or manifests as dicts, e.g. from :func:`build_authorization_policy`.
            force: take over fields managed by another field manager.
            ignore_missing: do not fail when an object to delete is already gone.
            on_error: called with ``namespace/name`` and the error for each object that could
                not be written or deleted; without it, the first such error is raised once
                every other object was handled.
            take_over: write a wanted object this manager does not own yet with a server-side
                apply, which takes over a same-named object someone else made (as every release
                did). ``False`` creates it instead: a same-named object that is not this
                manager's is left as it is and its write fails with 409 (``AlreadyExists``).
            max_workers: how many writes, then how many deletions, may be in flight at once.
                ``1`` sends them one after the other from the calling thread, as releases before
                LIBPATCH 18 did: for a client whose transport is not safe to share between
                threads.

        Raises:
            MissingCRDError: the AuthorizationPolicy CRD is not installed (Istio is missing).
            ValueError: an unsupported mesh type, a raw manifest without a name, or
                ``max_workers`` below 1.
            TypeError: a raw policy that is neither a dict nor a lightkube resource, or that is
                not an AuthorizationPolicy.
            lightkube.ApiError: anything else Kubernetes refused (403: the charm is not trusted).
        """
        if MeshType(mesh_type) is not MeshType.istio:  # pragma: no cover - one mesh type today
            raise ValueError(f"unsupported mesh type {mesh_type!r}")
        _check_max_workers(max_workers)
        wanted = {
            _manifest_key(manifest): manifest
            for manifest in self._wanted(policies, raw_policies or [])
        }
        existing = self._existing(namespaces={namespace for namespace, _ in wanted})
        self.listed = list(existing.values())
        created: list[str] = []
        updated: list[str] = []
        deleted: list[str] = []
        failures: list[Exception] = []
        unchanged = 0

        def failed(key: tuple[str, str], error: Exception) -> None:
            if on_error is None:
                failures.append(error)
            else:
                on_error("/".join(key), error)

        writes: list[tuple[tuple[str, str], dict[str, Any], dict[str, Any] | None]] = []
        for key, manifest in wanted.items():
            current = existing.get(key)
            if current is not None and _is_applied(manifest, current):
                unchanged += 1
            else:
                writes.append((key, manifest, current))
        calls = [
            functools.partial(
                self._write, key, manifest, current, take_over=take_over, force=force
            )
            for key, manifest, current in writes
        ]
        # Every write is answered before the first deletion goes out.
        unwritten: dict[tuple[str, str], dict[str, Any] | None] = {}
        for (key, _, current), error in zip(writes, _run_all(calls, max_workers), strict=True):
            if error is None:
                (updated if current is not None else created).append("/".join(key))
            else:
                failed(key, error)
                unwritten[key] = current
        doomed, kept = self._doomed(wanted, existing, unwritten)
        deletions = [
            functools.partial(self._delete, name, ns, ignore_missing) for ns, name in doomed
        ]
        for key, error in zip(doomed, _run_all(deletions, max_workers), strict=True):
            if error is None:
                deleted.append("/".join(key))
            else:
                failed(key, error)
        summary = ReconcileSummary(created, updated, deleted, unchanged, kept)
        if summary.changed:
            self.log.info(
                "policies: %d created, %d updated, %d deleted, %d unchanged",
                len(created),
                len(updated),
                len(deleted),
                unchanged,
            )
        if failures:
            raise failures[0]
        return summary

    def _doomed(
        self,
        wanted: Mapping[tuple[str, str], Mapping[str, Any]],
        existing: Mapping[tuple[str, str], Mapping[str, Any]],
        unwritten: Mapping[tuple[str, str], Mapping[str, Any] | None],
    ) -> tuple[list[tuple[str, str]], list[str]]:
        """The owned objects to delete, and those kept because their replacements are missing.

        Args:
            wanted: the wanted objects by key.
            existing: the owned objects in the cluster by key.
            unwritten: the wanted objects whose write failed, with the object as it was.
        """
        uncovered = _unreplaced_scopes(wanted, unwritten)
        doomed: list[tuple[str, str]] = []
        kept: list[str] = []
        for key in sorted(key for key in existing if key not in wanted):
            if uncovered and _policy_scope(existing[key]) in uncovered:
                kept.append("/".join(key))
            else:
                doomed.append(key)
        if kept:
            self.log.warning(
                "kept %d policies no longer wanted (%s) until the policies replacing them are "
                "written: deleting them now would leave their workloads without any",
                len(kept),
                ", ".join(kept[:3]) + (", ..." if len(kept) > 3 else ""),
            )
        return doomed, kept

    def _write(
        self,
        key: tuple[str, str],
        manifest: Mapping[str, Any],
        current: Mapping[str, Any] | None,
        *,
        take_over: bool,
        force: bool,
    ) -> None:
        """Create or server-side apply one policy; take off a dry-run mark it no longer wants."""
        from lightkube.types import PatchType

        resource: Any = _authorization_policy_resource()
        client: Any = self._client
        if current is None and not take_over:
            client.create(resource.from_dict(manifest))
        else:
            client.apply(resource.from_dict(manifest), force=force)
        if current is not None and _stale_dry_run(manifest, current):
            # A server-side apply removes only the fields its own earlier applies set; a dry-run
            # mark written by a create stays: remove it by name.
            client.patch(
                resource,
                key[1],
                {"metadata": {"annotations": {_DRY_RUN_ANNOTATION: None}}},
                namespace=key[0],
                patch_type=PatchType.MERGE,
            )

    def delete(
        self, ignore_missing: bool = True, *, max_workers: int = _DEFAULT_MAX_WORKERS
    ) -> None:
        """Delete every policy resource this manager owns.

        Up to ``max_workers`` deletions are in flight at once (see :meth:`reconcile`). A refused
        deletion does not stop the others; the first one (by ``namespace/name``) is raised once
        every other was tried.

        Raises:
            MissingCRDError: the AuthorizationPolicy CRD is not installed.
            ValueError: ``max_workers`` below 1.
            lightkube.ApiError: Kubernetes refused a deletion (403: the charm is not trusted).
        """
        _check_max_workers(max_workers)
        doomed = sorted(self._existing(namespaces=set()))
        calls = [functools.partial(self._delete, name, ns, ignore_missing) for ns, name in doomed]
        for error in _run_all(calls, max_workers):
            if error is not None:
                raise error

    def get_deployed_resources(self) -> list[dict[str, Any]]:
        """The policy resources this manager owns, as they are in the cluster."""
        return list(self._existing(namespaces=set()).values())

    def _wanted(
        self, policies: Sequence[MeshPolicy], raw_policies: Sequence[Mapping[str, Any] | Any]
    ) -> list[dict[str, Any]]:
        manifests = build_authorization_policies(policies, labels=self.labels)
        for raw in raw_policies:
            manifest = _plain_copy(_raw_policy_manifest(raw))
            metadata = manifest.setdefault("metadata", {})
            if not metadata.get("name"):
                raise ValueError(f"raw policy without metadata.name: {raw!r}")
            metadata.setdefault("namespace", self._charm.model.name)
            metadata["labels"] = {**(metadata.get("labels") or {}), **self.labels}
            manifest.setdefault("apiVersion", f"{_AUTHZ_GROUP}/{_AUTHZ_VERSION}")
            manifest.setdefault("kind", _AUTHZ_KIND)
            manifests.append(manifest)
        return manifests

    def _existing(self, namespaces: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
        from lightkube import ALL_NS

        resource = _authorization_policy_resource()
        client: Any = self._client  # lightkube's overloads are only partly typed
        selector: dict[str, Any] = dict(self.labels)
        if self._cluster_wide:
            try:
                return self._by_key(client.list(resource, namespace=ALL_NS, labels=selector))
            except Exception as error:  # lightkube.ApiError, or an HTTP error: _http_status_code
                self._raise_if_missing_crd(error)
                if _http_status_code(error) != 403:
                    raise
        # Not asked to, or not allowed to list across namespaces: look where it can write.
        items: list[Any] = []
        for namespace in sorted(namespaces | {self._charm.model.name}):
            try:
                items.extend(client.list(resource, namespace=namespace, labels=selector))
            except Exception as inner:
                self._raise_if_missing_crd(inner)
                raise
        return self._by_key(items)

    @staticmethod
    def _by_key(items: Iterable[Any]) -> dict[tuple[str, str], dict[str, Any]]:
        result: dict[tuple[str, str], dict[str, Any]] = {}
        for item in items:
            manifest = cast("dict[str, Any]", item.to_dict())
            result[_manifest_key(manifest)] = manifest
        return result

    def _delete(self, name: str, namespace: str, ignore_missing: bool) -> None:
        client: Any = self._client
        try:
            client.delete(_authorization_policy_resource(), name, namespace=namespace)
        except Exception as error:
            if not (ignore_missing and _http_status_code(error) == 404):
                raise

    @staticmethod
    def _raise_if_missing_crd(error: Exception) -> None:
        if _http_status_code(error) == 404:
            raise MissingCRDError(
                f"{_AUTHZ_PLURAL}.{_AUTHZ_GROUP}", "deploy Istio (the istio-k8s charm)"
            ) from error


def _check_max_workers(max_workers: int) -> None:
    if max_workers < 1:
        raise ValueError(f"max_workers must be at least 1, not {max_workers!r}")


def _policy_scope(manifest: Mapping[str, Any]) -> tuple[str, str, str]:
    """Which workloads an AuthorizationPolicy applies to: namespace, target references, selector.

    Two policies with the same scope apply to the same workloads (no ``targetRefs`` and no
    ``selector``: every workload of the namespace). A reference is its group, kind and name.
    """
    metadata = _as_mapping(manifest.get("metadata"))
    spec = _as_mapping(manifest.get("spec"))
    refs: object = spec.get("targetRefs") or [spec.get("targetRef")]
    targets = sorted(
        [str(ref.get("group") or ""), str(ref.get("kind") or ""), str(ref.get("name") or "")]
        for ref in map(_as_mapping, cast("list[object]", refs if isinstance(refs, list) else []))
        if ref
    )
    labels = _as_mapping(_as_mapping(spec.get("selector")).get("matchLabels"))
    return (
        str(metadata.get("namespace") or ""),
        json.dumps(targets),
        json.dumps(sorted((str(k), str(v)) for k, v in labels.items())),
    )


def _as_mapping(value: object) -> Mapping[str, Any]:
    return cast("Mapping[str, Any]", value) if isinstance(value, Mapping) else {}


def _unreplaced_scopes(
    wanted: Mapping[tuple[str, str], Mapping[str, Any]],
    unwritten: Mapping[tuple[str, str], Mapping[str, Any] | None],
) -> set[tuple[str, str, str]]:
    """The scopes of wanted objects none of which is in the cluster after a reconcile's writes.

    Args:
        wanted: every wanted object by key.
        unwritten: the wanted objects whose write failed, with the object as it was (``None``
            when it did not exist). The others are in the cluster as wanted.
    """
    if not unwritten:
        return set()
    standing = {_policy_scope(m) for key, m in wanted.items() if key not in unwritten}
    standing |= {_policy_scope(current) for current in unwritten.values() if current is not None}
    return {_policy_scope(wanted[key]) for key in unwritten} - standing


def _run_all(calls: Sequence[Callable[[], object]], max_workers: int) -> list[Exception | None]:
    """Run every call, at most ``max_workers`` at once; each one's error or ``None``, in order.

    One call, or ``max_workers`` 1, runs in the calling thread: no thread is started for a
    reconcile that writes one object or nothing (the steady state).
    """

    def attempt(call: Callable[[], object]) -> Exception | None:
        try:
            call()
        except Exception as error:  # lightkube.ApiError, or an HTTP or connection error
            return error
        return None

    if max_workers == 1 or len(calls) <= 1:
        return [attempt(call) for call in calls]
    # Imported here: most hooks write nothing and need no thread pool.
    from concurrent.futures import ThreadPoolExecutor

    workers = min(max_workers, len(calls))
    with ThreadPoolExecutor(workers, thread_name_prefix="policy-writes") as pool:
        return list(pool.map(attempt, calls))


def _raw_policy_manifest(raw: object) -> dict[str, Any]:
    """The manifest of a raw policy given as a dict or as a lightkube resource object."""
    # lightkube's generic resources are dicts too, holding model objects: to_dict() first.
    to_dict = getattr(raw, "to_dict", None)
    if callable(to_dict):
        manifest = cast("dict[str, Any]", to_dict())
        resource = type(raw)
        # Generic resources carry their kind on the class; to_dict() may leave it out.
        info = getattr(resource, "_api_info", None)
        kind = getattr(getattr(info, "resource", None), "kind", None)
        if kind and "kind" not in manifest:
            manifest["kind"] = kind
    elif isinstance(raw, Mapping):
        manifest = dict(cast("Mapping[str, Any]", raw))
    else:
        raise TypeError(
            f"raw_policy of type {type(raw).__name__!r} is neither a dict nor a lightkube "
            f"resource; give an {_AUTHZ_KIND} object or manifest"
        )
    kind = manifest.get("kind", _AUTHZ_KIND)
    if kind != _AUTHZ_KIND:
        raise TypeError(
            f"raw_policy of kind {kind!r} is not a supported policy resource: give an "
            f"{_AUTHZ_KIND}"
        )
    return manifest


def _plain_copy(manifest: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``manifest`` as JSON would give it back: dicts, lists, str, numbers.

    Copying a manifest of plain values directly costs a third of a JSON round trip, on every
    manifest of every reconcile; anything else still goes through JSON, which converts it.
    """
    try:
        return _copy_plain_dict(manifest)
    except _NotPlainError:
        return cast("dict[str, Any]", json.loads(json.dumps(manifest)))


def _copy_plain_dict(value: dict[Any, Any]) -> dict[str, Any]:
    copy: dict[str, Any] = {}
    for key, item in value.items():
        if type(key) is not str:
            raise _NotPlainError
        copy[key] = _copy_plain(item)
    return copy


def _copy_plain(value: object) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None or kind is float:
        return value
    if kind is dict:
        return _copy_plain_dict(cast("dict[Any, Any]", value))
    if kind is list:
        return [_copy_plain(item) for item in cast("list[Any]", value)]
    raise _NotPlainError


def _http_status_code(error: BaseException) -> int | None:
    """The HTTP status of a failed Kubernetes request, whatever lightkube raised for it.

    lightkube raises ``lightkube.ApiError`` when the API server answers with a JSON status, but
    its HTTP library's own error (httpx in lightkube 0.x, httpx2 in 1.x) when the answer is not
    JSON, as for a resource type the server does not serve at all (a CRD that is not installed:
    ``404 page not found`` in plain text). This reads both without importing either library.

    Returns:
        The status code, or ``None`` when ``error`` is not an HTTP error.
    """
    status = getattr(error, "status", None)
    code = getattr(status, "code", None)
    if isinstance(code, int):
        return code
    response = getattr(error, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


#: Istio's annotation that makes an AuthorizationPolicy evaluated without being enforced.
_DRY_RUN_ANNOTATION = "istio.io/dry-run"


def _stale_dry_run(wanted: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether ``current`` carries Istio's dry-run annotation and ``wanted`` does not."""
    want_meta = cast("Mapping[str, Any]", wanted.get("metadata") or {})
    have_meta = cast("Mapping[str, Any]", current.get("metadata") or {})
    want = cast("Mapping[str, str]", want_meta.get("annotations") or {})
    have = cast("Mapping[str, str]", have_meta.get("annotations") or {})
    return _DRY_RUN_ANNOTATION in have and _DRY_RUN_ANNOTATION not in want


def _is_applied(wanted: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether ``current`` already is what ``wanted`` asks for.

    Extra labels and annotations are fine, except Istio's dry-run annotation: a policy that
    carries it is not enforced, so it must go when ``wanted`` does not ask for it.
    """
    if wanted.get("spec") != current.get("spec"):
        return False
    want_meta = cast("Mapping[str, Any]", wanted.get("metadata") or {})
    have_meta = cast("Mapping[str, Any]", current.get("metadata") or {})
    if _stale_dry_run(wanted, current):
        return False
    for key in ("labels", "annotations"):
        want = cast("Mapping[str, str]", want_meta.get(key) or {})
        have = cast("Mapping[str, str]", have_meta.get(key) or {})
        if any(have.get(name) != value for name, value in want.items()):
            return False
    return True
