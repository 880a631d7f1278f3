"""A small, stateful fake of the Kubernetes API, served over plain HTTP on loopback.

Unit tests point ``KUBECONFIG`` at :attr:`FakeKubeServer.kubeconfig_path`, so library and charm
code that builds ``lightkube.Client()`` from the environment talks to the fake exactly as it would
talk to a cluster::

    with FakeKubeServer() as kube:
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig_path))
        kube.put({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"}})
        ...  # exercise the code under test
        assert kube.get("services", "default", "app")["metadata"]["labels"] == {...}

What it serves, at the real API paths: core/v1 namespaces (cluster-scoped), services, configmaps,
serviceaccounts and pods; apps/v1 statefulsets and deployments; autoscaling/v2
horizontalpodautoscalers; and the CRD-backed security.istio.io/v1 authorizationpolicies and
gateway.networking.k8s.io/v1 gateways, which exist only while their CRD is "installed".

Behaviour that follows the real API server:

- verbs get, list (one namespace or all), create, update (PUT), patch, delete and deletecollection;
  ``labelSelector`` (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (..)``, ``k notin (..)``),
  ``fieldSelector`` on ``metadata.name``/``metadata.namespace``, ``limit``/``continue``;
- a resource the server does not serve outside the built-in groups (a custom resource whose CRD
  is not installed, any other group) and any path outside ``/api`` and ``/apis`` get what
  kube-apiserver answers there: 404 with ``Content-Type: text/plain; charset=utf-8`` and the body
  ``404 page not found`` (and a newline). That is not JSON, so lightkube raises its HTTP library's
  ``HTTPStatusError`` for it, not ``lightkube.ApiError``. An unknown resource or version in a
  built-in group (``/api/v1``, ``apps``, ``autoscaling``) gets a JSON 404 NotFound "the server
  could not find the requested resource" with empty details, as there;
- other errors are ``Status`` objects with ``Content-Type: application/json`` (what lightkube
  turns into ``ApiError``): 404 NotFound for a missing object or a missing namespace on create;
  409 AlreadyExists; 409 Conflict for a stale ``metadata.resourceVersion`` or an apply conflict
  without ``force``; 422 Invalid for bad names, label keys/values and annotation keys, and for an
  apply without ``fieldManager``; 415 for a strategic merge patch on a custom resource; 403
  Forbidden for requests matched by :meth:`FakeKubeServer.forbid` (checked before whether the
  resource is served, as RBAC is on a real server);
- every object gets ``metadata.uid``, ``creationTimestamp``, ``resourceVersion`` (one global
  counter, bumped only when a write actually changes the stored object, managed fields included,
  so a repeated apply or a no-op patch leaves it alone) and ``generation`` for kinds that have one
  (bumped when anything outside metadata and status changes);
- the ``status`` of kinds with a status subresource is not writable through the main resource;
- list items of built-in kinds carry no ``apiVersion``/``kind`` (custom resources do).

Simplifications (documented so a test does not rely on them):

- server-side apply: maps merge recursively and every list is atomic (replaced whole); a manager
  owns the leaf paths it applied; a path it applied before and no longer sends is removed unless
  another manager also owns it; a leaf owned by another manager with a different value is a
  conflict unless ``force=true``, which takes ownership. Updates (create, PUT, merge patch) give
  their manager (``fieldManager`` or the user agent's product name) the leaves they changed.
  ``metadata.managedFields`` is rendered from that bookkeeping, without timestamps;
- a strategic merge patch is applied as a JSON merge patch (no merge keys, no ``$patch``
  directives), and JSON patch (RFC 6902) is not implemented (415);
- no schema validation or defaulting, no watch, no subresources (``/status``, ``/scale``), no
  finalizers or garbage collection: delete is immediate, deleting a namespace deletes its content;
- authentication is not checked; authorization is only what :meth:`FakeKubeServer.forbid` says.

:meth:`FakeKubeServer.put` seeds objects directly (no authorization, no status stripping), for
objects that Juju or a controller would have created; it creates a missing namespace on the way.

Responses close the connection (``Connection: close``) so that clients which are never closed, like
the ones charms build, leave no pooled socket behind to raise ``ResourceWarning`` at collection.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import http.client
import json
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, TypedDict, cast
from urllib.parse import parse_qs, urlsplit

import lightkube
import yaml
from lightkube.config.kubeconfig import KubeConfig

JsonDict = dict[str, Any]
FieldPath = tuple[str, ...]
ManagerKey = tuple[str, str]  # (manager, operation): operation is "Apply" or "Update"

AUTHORIZATION_POLICY_CRD = "authorizationpolicies.security.istio.io"
GATEWAY_CRD = "gateways.gateway.networking.k8s.io"
ALL_CRDS = frozenset({AUTHORIZATION_POLICY_CRD, GATEWAY_CRD})

FAKE_USER = "system:serviceaccount:default:fake-kube"
_DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class ResourceKind:
    """A kind served by the fake, with what the real API server knows about it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    crd: str | None = None
    has_status: bool = False
    has_generation: bool = False

    @property
    def api_version(self) -> str:
        """The ``apiVersion`` of objects of this kind."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """The resource as the API server names it in messages, e.g. ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """The kind as named in validation messages, e.g. ``Deployment.apps``."""
        return f"{self.kind}.{self.group}" if self.group else self.kind


class _KindFlags(TypedDict):
    crd: str | None
    has_status: bool
    has_generation: bool


def _workload(crd: str | None = None) -> _KindFlags:
    """Kinds with a spec, a status subresource and a generation."""
    return {"crd": crd, "has_status": True, "has_generation": True}


KINDS: dict[str, ResourceKind] = {
    k.plural: k
    for k in (
        ResourceKind("", "v1", "namespaces", "Namespace", namespaced=False, has_status=True),
        ResourceKind("", "v1", "services", "Service", has_status=True),
        ResourceKind("", "v1", "configmaps", "ConfigMap"),
        ResourceKind("", "v1", "serviceaccounts", "ServiceAccount"),
        ResourceKind("", "v1", "pods", "Pod", has_status=True),
        ResourceKind("apps", "v1", "statefulsets", "StatefulSet", **_workload()),
        ResourceKind("apps", "v1", "deployments", "Deployment", **_workload()),
        ResourceKind(
            "autoscaling",
            "v2",
            "horizontalpodautoscalers",
            "HorizontalPodAutoscaler",
            **_workload(),
        ),
        ResourceKind(
            "security.istio.io",
            "v1",
            "authorizationpolicies",
            "AuthorizationPolicy",
            **_workload(AUTHORIZATION_POLICY_CRD),
        ),
        ResourceKind(
            "gateway.networking.k8s.io", "v1", "gateways", "Gateway", **_workload(GATEWAY_CRD)
        ),
    )
}

BUILTIN_GROUPS = frozenset(kind.group for kind in KINDS.values() if kind.crd is None)
"""The API groups compiled into the server (``""`` is the core group, ``/api/v1``)."""

PAGE_NOT_FOUND = "404 page not found\n"
"""The plain-text body of a real API server's 404 for a path that nothing serves."""


class KubeRequest(NamedTuple):
    """One request the fake received, as recorded in :attr:`FakeKubeServer.requests`.

    ``verb`` is the Kubernetes verb (get, list, watch, create, update, patch, delete,
    deletecollection), except that a server-side apply is recorded as ``apply``; it is ``unknown``
    for a path outside the served API.
    """

    method: str
    path: str
    verb: str
    resource: str | None = None
    namespace: str | None = None
    name: str | None = None
    content_type: str | None = None
    field_manager: str | None = None


@dataclass(frozen=True)
class ForbidRule:
    """Requests matching every non-None field are refused with 403 Forbidden.

    ``verb`` ``patch`` also matches server-side apply, as in RBAC. With ``cluster_wide_only``
    the rule matches only requests whose path names no namespace (see
    :meth:`FakeKubeServer.forbid`).
    """

    verb: str | None = None
    resource: str | None = None
    namespace: str | None = None
    name: str | None = None
    cluster_wide_only: bool = False

    def matches(self, verb: str, resource: str, namespace: str | None, name: str | None) -> bool:
        """Whether this rule refuses the given request."""
        return (
            not (self.cluster_wide_only and namespace is not None)
            and (self.verb is None or self.verb == verb)
            and (self.resource is None or self.resource == resource)
            and (self.namespace is None or self.namespace == namespace)
            and (self.name is None or self.name == name)
        )


class _StatusError(Exception):
    def __init__(
        self, code: int, reason: str, message: str, details: JsonDict | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def body(self) -> JsonDict | str:
        """The response body: a ``Status`` object (sent as JSON)."""
        return self.status()

    def status(self) -> JsonDict:
        body: JsonDict = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


class _PageNotFoundError(_StatusError):
    """What kube-apiserver answers for a path nothing serves: not a ``Status``, plain text."""

    def __init__(self) -> None:
        super().__init__(404, "NotFound", "404 page not found")

    def body(self) -> JsonDict | str:
        """The plain-text body (sent as ``text/plain; charset=utf-8``)."""
        return PAGE_NOT_FOUND


def _resource_not_found() -> _StatusError:
    return _StatusError(404, "NotFound", "the server could not find the requested resource", {})


def _not_served(group: str) -> _StatusError:
    """A 404 for a resource type the server does not serve, as the real server words it.

    The built-in groups answer with a JSON ``Status``; everything else under ``/apis`` (the groups
    that custom resources add, whether or not some of their CRDs are installed) falls through to
    the API server's catch-all, which answers in plain text.
    """
    return _resource_not_found() if group in BUILTIN_GROUPS else _PageNotFoundError()


def _details(kind: ResourceKind, name: str | None) -> JsonDict:
    details: JsonDict = {"kind": kind.plural}
    if name is not None:
        details["name"] = name
    if kind.group:
        details["group"] = kind.group
    return details


def _not_found(kind: ResourceKind, name: str) -> _StatusError:
    return _StatusError(
        404, "NotFound", f'{kind.group_resource} "{name}" not found', _details(kind, name)
    )


def _bad_request(message: str) -> _StatusError:
    return _StatusError(400, "BadRequest", message)


def _invalid(kind: ResourceKind, name: str, causes: list[str]) -> _StatusError:
    message = f'{kind.qualified_kind} "{name}" is invalid: ' + ", ".join(causes)
    return _StatusError(422, "Invalid", message, _details(kind, name))


def _conflict(kind: ResourceKind, name: str, message: str) -> _StatusError:
    return _StatusError(409, "Conflict", message, _details(kind, name))


# Validation, with the patterns the API server uses.
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*"
_DNS1035_LABEL = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME_PART = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"


def _name_errors(kind: ResourceKind, name: str) -> list[str]:
    if kind.plural == "services":
        pattern, limit, what = _DNS1035_LABEL, 63, "a DNS-1035 label"
    elif kind.plural == "namespaces":
        pattern, limit, what = _DNS1123_LABEL, 63, "a lowercase RFC 1123 label"
    else:
        pattern, limit, what = _DNS1123_SUBDOMAIN, 253, "a lowercase RFC 1123 subdomain"
    if len(name) > limit:
        return [f'metadata.name: Invalid value: "{name}": must be no more than {limit} characters']
    if not re.fullmatch(pattern, name):
        return [
            f'metadata.name: Invalid value: "{name}": {what} must consist of lower case '
            "alphanumeric characters or '-' (and '.' for a subdomain), and must start and end "
            f"with an alphanumeric character (regex used for validation is '{pattern}')"
        ]
    return []


def _qualified_name_errors(field: str, key: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    errors: list[str] = []
    if "/" in key and (len(prefix) > 253 or not re.fullmatch(_DNS1123_SUBDOMAIN, prefix)):
        errors.append(f'{field}: Invalid value: "{key}": prefix part must be a DNS-1123 subdomain')
    if not name or len(name) > 63 or not re.fullmatch(_QUALIFIED_NAME_PART, name):
        errors.append(
            f'{field}: Invalid value: "{key}": name part must consist of alphanumeric characters, '
            "'-', '_' or '.', must start and end with an alphanumeric character and be no more "
            "than 63 characters"
        )
    return errors


def _label_errors(field: str, labels: JsonDict) -> list[str]:
    errors: list[str] = []
    for key, value in labels.items():
        errors += _qualified_name_errors(field, key)
        if len(value) > 63:
            errors.append(f'{field}: Invalid value: "{value}": must be no more than 63 characters')
        elif value and not re.fullmatch(_QUALIFIED_NAME_PART, value):
            errors.append(
                f'{field}: Invalid value: "{value}": a valid label must be an empty string or '
                "consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
                "an alphanumeric character"
            )
    return errors


def _check_string_map(obj: JsonDict, path: FieldPath) -> JsonDict:
    value = _get_path(obj, path, {})
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _bad_request(
            f"json: cannot unmarshal {'.'.join(path)} into Go value of type map[string]string"
        )
    return value


def _validate(kind: ResourceKind, obj: JsonDict) -> None:
    name = obj["metadata"]["name"]
    labels = _check_string_map(obj, ("metadata", "labels"))
    annotations = _check_string_map(obj, ("metadata", "annotations"))
    template_labels = _check_string_map(obj, ("spec", "template", "metadata", "labels"))
    errors = _name_errors(kind, name)
    errors += _label_errors("metadata.labels", labels)
    errors += _label_errors("spec.template.metadata.labels", template_labels)
    for key in annotations:
        errors += _qualified_name_errors("metadata.annotations", key)
    if errors:
        raise _invalid(kind, name, errors)


# Paths into JSON objects.
_MISSING: Any = object()
# Metadata the server owns: never taken from a request body, never a managed field.
_SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")


def _get_path(obj: Any, path: FieldPath, default: Any = _MISSING) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return default
        obj = obj[key]
    return obj


def _remove_path(obj: JsonDict, path: FieldPath) -> None:
    """Remove a path, then the maps it leaves empty (never the top-level ones)."""
    parents: list[JsonDict] = [obj]
    for key in path[:-1]:
        child = parents[-1].get(key)
        if not isinstance(child, dict):
            return
        parents.append(child)
    parents[-1].pop(path[-1], None)
    for depth in range(len(path) - 1, 1, -1):
        if parents[depth]:
            break
        parents[depth - 1].pop(path[depth - 1], None)


def _leaf_paths(obj: JsonDict, prefix: FieldPath = ()) -> set[FieldPath]:
    paths: set[FieldPath] = set()
    for key, value in obj.items():
        path = (*prefix, key)
        if isinstance(value, dict) and value:
            paths |= _leaf_paths(value, path)
        elif value is not None:
            paths.add(path)
    return paths


def _managed_paths(kind: ResourceKind, obj: JsonDict) -> set[FieldPath]:
    excluded = {("metadata", k) for k in (*_SERVER_METADATA, "name", "namespace")}
    return {
        path
        for path in _leaf_paths(obj)
        if path[0] not in ("apiVersion", "kind")
        and path[:2] not in excluded
        and not (kind.has_status and path[0] == "status")
    }


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge recursively, null removes, anything else replaces.

    Returns a new object that shares nothing with ``target`` or ``patch``: the caller goes on to
    change the result (server-owned metadata), which must not reach the stored object.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    source = cast("JsonDict", target) if isinstance(target, dict) else {}
    result: JsonDict = {}
    for key, value in source.items():
        if key not in patch:
            result[key] = copy.deepcopy(value)
        elif patch[key] is not None:
            result[key] = _merge_patch(value, patch[key])
    for key, value in patch.items():
        if key not in source and value is not None:
            result[key] = _merge_patch(None, value)
    return result


def _fields_v1(paths: Iterable[FieldPath]) -> JsonDict:
    tree: JsonDict = {}
    for path in sorted(paths):
        node = tree
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return tree


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# Selectors.
def _split_terms(text: str) -> list[str]:
    terms: list[str] = []
    depth, start = 0, 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            terms.append(text[start:index])
            start = index + 1
    terms.append(text[start:])
    return [term.strip() for term in terms if term.strip()]


Matcher = Callable[[dict[str, str]], bool]


def _label_term(term: str) -> Matcher:
    set_match = re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", term)
    if set_match:
        key, op, raw = set_match.groups()
        values = {v.strip() for v in raw.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    eq_match = re.fullmatch(r"([^\s!=]+)\s*(==|=|!=)\s*([^\s!=,]*)", term)
    if eq_match:
        key, op, value = eq_match.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    exists_match = re.fullmatch(r"(!?)\s*([^\s!=()]+)", term)
    if exists_match:
        negate, key = exists_match.groups()
        return lambda labels: (key in labels) != bool(negate)
    raise _bad_request(f"unable to parse requirement: invalid label selector term {term!r}")


def _label_selector(text: str) -> Matcher:
    matchers = [_label_term(term) for term in _split_terms(text)]
    return lambda labels: all(match(labels) for match in matchers)


def _field_selector(text: str) -> Callable[[JsonDict], bool]:
    checks: list[Callable[[JsonDict], bool]] = []
    for term in _split_terms(text):
        match = re.fullmatch(r"([^\s!=]+)\s*(==|=|!=)\s*(\S*)", term)
        if not match:
            raise _bad_request(f"invalid field selector term {term!r}")
        field, op, value = match.groups()
        if field not in ("metadata.name", "metadata.namespace"):
            raise _bad_request(f'field label not supported: "{field}"')
        key = field.split(".")[1]
        equal = op != "!="
        checks.append(lambda obj, k=key, v=value, e=equal: (obj["metadata"].get(k) == v) == e)
    return lambda obj: all(check(obj) for check in checks)


# Storage.
StoreKey = tuple[str, str, str]  # (plural, namespace or "", name)


@dataclass
class _Entry:
    obj: JsonDict
    owners: dict[ManagerKey, set[FieldPath]]


class _Route(NamedTuple):
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None


def _parse_path(path: str) -> _Route:
    parts = [part for part in path.split("/") if part]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    elif (
        parts[:1] == ["api"]
        or parts == ["apis"]
        or (parts[:1] == ["apis"] and parts[1] in BUILTIN_GROUPS)
    ):
        raise _resource_not_found()  # discovery, which the fake does not serve
    else:
        raise _PageNotFoundError()  # a group nothing serves, or a path outside the API
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 2:
        raise _not_served(group)  # discovery or subresources, which the fake does not serve
    return _Route(group, version, rest[0], namespace, rest[1] if len(rest) == 2 else None)


def _verb(method: str, route: _Route, query: dict[str, str], content_type: str) -> str:
    if method == "GET":
        if route.name is not None:
            return "get"
        return "watch" if query.get("watch") in ("true", "1") else "list"
    if method == "PATCH":
        return "apply" if content_type == "application/apply-patch+yaml" else "patch"
    return {
        "POST": "create",
        "PUT": "update",
        "DELETE": "delete" if route.name is not None else "deletecollection",
    }.get(method, method.lower())


class FakeKubeServer:
    """A stateful fake Kubernetes API server on 127.0.0.1, for unit tests.

    Use it as a context manager; the server listens from ``__enter__`` to ``__exit__``. See the
    module docstring for what it serves and how faithfully.

    Args:
        crds: names of the installed CRDs (``<plural>.<group>``); by default both
            :data:`AUTHORIZATION_POLICY_CRD` and :data:`GATEWAY_CRD`.
        namespaces: namespaces that exist from the start.
    """

    def __init__(
        self,
        crds: Iterable[str] = ALL_CRDS,
        namespaces: Iterable[str] = _DEFAULT_NAMESPACES,
    ) -> None:
        unknown = set(crds) - ALL_CRDS
        if unknown:
            raise ValueError(f"unknown CRDs {sorted(unknown)}; known: {sorted(ALL_CRDS)}")
        self._lock = threading.RLock()
        self._crds: set[str] = set(crds)
        self._store: dict[StoreKey, _Entry] = {}
        self._resource_version = 1000
        self._rules: list[ForbidRule] = []
        self._rejections: list[tuple[ForbidRule, int, str]] = []
        self.requests: list[KubeRequest] = []
        """Every request received, oldest first (see :meth:`reset_requests`)."""
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._clients: list[lightkube.Client] = []
        self._kubeconfig_path: Path | None = None
        for namespace in namespaces:
            self.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})

    # Lifecycle.
    def __enter__(self) -> FakeKubeServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Listen on a free loopback port and write the kubeconfig file."""
        if self._server is not None:
            raise RuntimeError("FakeKubeServer is already started")
        self._server = _HTTPServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        self._tempdir = tempfile.TemporaryDirectory(prefix="fake-kube-")
        self._kubeconfig_path = Path(self._tempdir.name) / "kubeconfig"
        self._kubeconfig_path.write_text(json.dumps(self._kubeconfig()))

    def close(self) -> None:
        """Close the clients made by :meth:`client`, stop the server, remove the kubeconfig."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    @property
    def url(self) -> str:
        """The server's base URL, ``http://127.0.0.1:<port>``."""
        if self._server is None:
            raise RuntimeError("FakeKubeServer is not started: use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def kubeconfig_path(self) -> Path:
        """A kubeconfig whose current context is this server, namespace ``default``."""
        if self._kubeconfig_path is None:
            raise RuntimeError("FakeKubeServer is not started: use it as a context manager")
        return self._kubeconfig_path

    def _kubeconfig(self) -> JsonDict:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake-kube", "cluster": {"server": self.url}}],
            "users": [{"name": "fake-kube", "user": {"token": "fake-token"}}],
            "contexts": [
                {
                    "name": "fake-kube",
                    "context": {
                        "cluster": "fake-kube",
                        "user": "fake-kube",
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "fake-kube",
        }

    def client(self, field_manager: str | None = None) -> lightkube.Client:
        """A lightkube client for this server, closed when the server closes."""
        client = lightkube.Client(
            KubeConfig.from_file(self.kubeconfig_path), field_manager=field_manager
        )
        self._clients.append(client)
        return client

    def raw_response(self, method: str, path: str) -> tuple[int, str | None, str]:
        """Send one request without a body, without lightkube: ``(status, Content-Type, text)``.

        The same as ``KubeServer.raw_response`` of the real-server tier, to compare the two.
        """
        address = urlsplit(self.url)
        conn = http.client.HTTPConnection(address.hostname or "", address.port, timeout=10)
        try:
            conn.request(method, path, headers={"Accept": "application/json"})
            response = conn.getresponse()
            content_type = response.getheader("Content-Type")
            body = response.read().decode(errors="replace")
        finally:
            conn.close()
        return response.status, content_type, body

    # CRDs, authorization, accounting.
    @property
    def crds(self) -> frozenset[str]:
        """The names of the installed CRDs."""
        with self._lock:
            return frozenset(self._crds)

    def install_crd(self, name: str) -> None:
        """Install a CRD (one of :data:`ALL_CRDS`): its resource path starts answering."""
        if name not in ALL_CRDS:
            raise ValueError(f"unknown CRD {name!r}; known: {sorted(ALL_CRDS)}")
        with self._lock:
            self._crds.add(name)

    def uninstall_crd(self, name: str) -> None:
        """Remove a CRD and, as the real server does, every object of its kind."""
        with self._lock:
            self._crds.discard(name)
            for key in [k for k in self._store if KINDS[k[0]].crd == name]:
                del self._store[key]

    def forbid(
        self,
        verb: str | None = None,
        resource: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        *,
        cluster_wide_only: bool = False,
    ) -> None:
        """Refuse matching requests with 403 Forbidden; None matches anything. Rules add up.

        ``verb`` is a Kubernetes RBAC verb (get, list, watch, create, update, patch, delete,
        deletecollection); a server-side apply needs ``patch``, and ``create`` when the object does
        not exist yet. ``resource`` is the plural, e.g. ``authorizationpolicies``.

        ``cluster_wide_only`` refuses only the requests whose path names no namespace: lists
        (and watches, deletecollections) across all namespaces, and every request for a
        cluster-scoped kind. That is what RBAC answers an app that may act in its own namespace
        only (a Role, no ClusterRole), e.g. a Juju app without ``juju trust``.

        Raises:
            ValueError: ``cluster_wide_only`` together with a ``namespace`` (it could never match).
        """
        if cluster_wide_only and namespace is not None:
            raise ValueError("a cluster-wide-only rule cannot name a namespace")
        with self._lock:
            self._rules.append(ForbidRule(verb, resource, namespace, name, cluster_wide_only))

    def reject(
        self,
        code: int,
        message: str,
        verb: str | None = None,
        resource: str | None = None,
        name: str | None = None,
    ) -> None:
        """Answer matching requests with ``code`` and ``message``, as admission control would.

        For example 422 from a webhook, or 413 for an object beyond the server's size limit.

        Matching is :class:`ForbidRule`'s; rules add up; :meth:`allow_all` drops them.
        """
        with self._lock:
            self._rejections.append((ForbidRule(verb, resource, None, name), code, message))

    def allow_all(self) -> None:
        """Drop every rule added by :meth:`forbid` and :meth:`reject`."""
        with self._lock:
            self._rules.clear()
            self._rejections.clear()

    def write_count(self) -> int:
        """How many POST, PUT, PATCH and DELETE requests were received (failed ones included)."""
        with self._lock:
            return sum(1 for request in self.requests if request.method in _WRITE_METHODS)

    def reset_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()

    # Direct state access, for tests.
    def get(self, plural: str, namespace: str | None, name: str) -> JsonDict | None:
        """A copy of a stored object as the API would return it, or None.

        ``namespace`` is ignored for cluster-scoped kinds (namespaces).
        """
        kind = self._kind(plural)
        with self._lock:
            entry = self._store.get(self._key(kind, namespace, name))
            return self._render(kind, entry) if entry else None

    def list(self, plural: str, namespace: str | None = None) -> list[JsonDict]:
        """Copies of the stored objects of a kind (in one namespace, or all), sorted by key."""
        kind = self._kind(plural)
        with self._lock:
            return [
                self._render(kind, entry)
                for key, entry in sorted(self._store.items())
                if key[0] == plural and (namespace is None or key[1] == namespace)
            ]

    def put(self, obj: JsonDict, field_manager: str | None = None) -> JsonDict:
        """Store an object directly, replacing any with the same key; returns what was stored.

        No authorization and no status stripping: this seeds what Juju or a controller would have
        created (``status`` included). The server fills in ``uid``, ``resourceVersion`` and
        ``creationTimestamp``; a namespaced object without namespace goes to ``default``; a
        missing namespace is created. ``field_manager`` records who owns the fields (an Update).
        """
        kind = self._kind_of(obj)
        if kind.crd is not None and kind.crd not in self._crds:
            raise ValueError(f"CRD {kind.crd} is not installed")
        new = copy.deepcopy(obj)
        metadata = new.setdefault("metadata", {})
        if kind.namespaced:
            metadata.setdefault("namespace", "default")
        name, namespace = metadata["name"], metadata.get("namespace")
        _validate(kind, new)
        with self._lock:
            if namespace is not None and not self._namespace_exists(namespace):
                self.put(
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
                )
            key = self._key(kind, namespace, name)
            old = self._store.get(key)
            for field in _SERVER_METADATA:
                metadata.pop(field, None)
            if old is not None:
                metadata["uid"] = old.obj["metadata"]["uid"]
                metadata["creationTimestamp"] = old.obj["metadata"]["creationTimestamp"]
            owners: dict[ManagerKey, set[FieldPath]] = {}
            if field_manager is not None:
                owners[(field_manager, "Update")] = _managed_paths(kind, new)
            self._store.pop(key, None)
            return self._commit(kind, key, None, new, owners)

    def delete(self, plural: str, namespace: str | None, name: str) -> bool:
        """Delete a stored object directly; returns whether it existed."""
        kind = self._kind(plural)
        with self._lock:
            key = self._key(kind, namespace, name)
            if key not in self._store:
                return False
            self._remove(key)
            return True

    # Internals: state.
    @staticmethod
    def _kind(plural: str) -> ResourceKind:
        try:
            return KINDS[plural]
        except KeyError:
            raise ValueError(f"unknown resource {plural!r}; known: {sorted(KINDS)}") from None

    @staticmethod
    def _kind_of(obj: JsonDict) -> ResourceKind:
        for kind in KINDS.values():
            if kind.api_version == obj.get("apiVersion") and kind.kind == obj.get("kind"):
                return kind
        raise ValueError(f"unknown kind {obj.get('apiVersion')}/{obj.get('kind')}")

    @staticmethod
    def _key(kind: ResourceKind, namespace: str | None, name: str) -> StoreKey:
        return (kind.plural, (namespace or "default") if kind.namespaced else "", name)

    def _namespace_exists(self, namespace: str) -> bool:
        return ("namespaces", "", namespace) in self._store

    def _remove(self, key: StoreKey) -> JsonDict:
        entry = self._store.pop(key)
        if key[0] == "namespaces":
            for inner in [k for k in self._store if k[1] == key[2]]:
                del self._store[inner]
        self._resource_version += 1
        return entry.obj

    def _render(self, kind: ResourceKind, entry: _Entry) -> JsonDict:
        obj = copy.deepcopy(entry.obj)
        managed = [
            {
                "manager": manager,
                "operation": operation,
                "apiVersion": kind.api_version,
                "fieldsType": "FieldsV1",
                "fieldsV1": _fields_v1(paths),
            }
            for (manager, operation), paths in entry.owners.items()
            if paths
        ]
        if managed:
            obj["metadata"]["managedFields"] = managed
        return obj

    def _commit(
        self,
        kind: ResourceKind,
        key: StoreKey,
        old: _Entry | None,
        new: JsonDict,
        owners: dict[ManagerKey, set[FieldPath]],
    ) -> JsonDict:
        """Store ``new`` unless it equals ``old``; bump resourceVersion only on a change."""
        owners = {
            manager: {path for path in paths if _get_path(new, path) is not _MISSING}
            for manager, paths in owners.items()
        }
        owners = {manager: paths for manager, paths in owners.items() if paths}
        new["apiVersion"], new["kind"] = kind.api_version, kind.kind
        metadata = new["metadata"]
        if old is not None:
            for field in ("uid", "creationTimestamp", "generation", "resourceVersion"):
                if field in old.obj["metadata"]:
                    metadata[field] = old.obj["metadata"][field]
                else:
                    metadata.pop(field, None)
            if new == old.obj and owners == old.owners:
                return self._render(kind, old)
            if kind.has_generation and {
                k: v for k, v in new.items() if k not in ("metadata", "status")
            } != {k: v for k, v in old.obj.items() if k not in ("metadata", "status")}:
                metadata["generation"] = metadata.get("generation", 0) + 1
        else:
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault("creationTimestamp", _now())
            if kind.has_generation:
                metadata["generation"] = 1
        self._resource_version += 1
        metadata["resourceVersion"] = str(self._resource_version)
        entry = _Entry(new, owners)
        self._store[key] = entry
        return self._render(kind, entry)

    # Internals: HTTP.
    def _record(self, request: KubeRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def handle(
        self, method: str, raw_path: str, content_type: str, body: bytes, user_agent: str
    ) -> tuple[int, JsonDict | str]:
        """Serve one API request; returns the HTTP status and the body (JSON, or plain text)."""
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        content_type = content_type.split(";", maxsplit=1)[0].strip()
        try:
            route = _parse_path(split.path)
        except _StatusError as failure:
            self._record(KubeRequest(method, split.path, "unknown"))
            return failure.code, failure.body()
        verb = _verb(method, route, query, content_type)
        self._record(
            KubeRequest(
                method,
                split.path,
                verb,
                route.plural,
                route.namespace,
                route.name,
                content_type or None,
                query.get("fieldManager"),
            )
        )
        try:
            with self._lock:
                return self._serve(route, verb, query, content_type, body, user_agent)
        except _StatusError as failure:
            return failure.code, failure.body()
        except Exception as error:  # a bug in the fake: say so rather than drop the connection
            failure = _StatusError(500, "InternalError", f"fake kube-apiserver error: {error!r}")
            return failure.code, failure.status()

    def _authorize(
        self, verb: str, route: _Route, name: str | None = None, admitted: str | None = None
    ) -> None:
        """RBAC (by the name in the path) and admission (``admitted``: the name in the body)."""
        rbac_verb = "patch" if verb == "apply" else verb
        name = name or route.name
        for rule, code, message in self._rejections:
            if rule.matches(rbac_verb, route.plural, route.namespace, admitted or name):
                raise _StatusError(code, "Invalid" if code == 422 else "Rejected", message)
        if not any(
            rule.matches(rbac_verb, route.plural, route.namespace, name) for rule in self._rules
        ):
            return
        group = route.group
        target = f"{route.plural}.{group}" if group else route.plural
        subject = f'{target} "{name}"' if name else target
        scope = (
            f'in the namespace "{route.namespace}"' if route.namespace else "at the cluster scope"
        )
        details: JsonDict = {"kind": route.plural}
        if name:
            details["name"] = name
        if group:
            details["group"] = group
        raise _StatusError(
            403,
            "Forbidden",
            f'{subject} is forbidden: User "{FAKE_USER}" cannot {rbac_verb} resource '
            f'"{route.plural}" in API group "{group}" {scope}',
            details,
        )

    def _served_kind(self, route: _Route) -> ResourceKind:
        kind = KINDS.get(route.plural)
        if (
            kind is None
            or (kind.group, kind.version) != (route.group, route.version)
            or (kind.crd is not None and kind.crd not in self._crds)
        ):
            raise _not_served(route.group)
        if (not kind.namespaced and route.namespace is not None) or (
            kind.namespaced and route.namespace is None and route.name is not None
        ):
            raise _resource_not_found()
        return kind

    def _serve(  # noqa: PLR0911 (one return per verb reads best)
        self,
        route: _Route,
        verb: str,
        query: dict[str, str],
        content_type: str,
        body: bytes,
        user_agent: str,
    ) -> tuple[int, JsonDict]:
        admitted: str | None = None
        if verb == "create" and route.name is None:
            with contextlib.suppress(Exception):  # a body that is not an object: refused below
                admitted = _decode(body).get("metadata", {}).get("name")
        self._authorize(verb, route, admitted=admitted)
        kind = self._served_kind(route)
        manager = query.get("fieldManager") or user_agent.split("/", maxsplit=1)[0] or "unknown"
        if verb == "get":
            return 200, self._get(kind, route)
        if verb == "list":
            return 200, self._list(kind, route, query)
        if verb == "create" and route.name is None and (route.namespace or not kind.namespaced):
            return 201, self._create(kind, route, _decode(body), manager)
        if verb == "update" and route.name is not None:
            return 200, self._update(kind, route, _decode(body), manager)
        if verb == "apply" and route.name is not None:
            return self._apply(kind, route, body, query)
        if verb == "patch" and route.name is not None:
            return 200, self._patch(kind, route, content_type, body, query, manager)
        if verb == "delete" and route.name is not None:
            return 200, self._delete(kind, route)
        if verb == "deletecollection":
            return 200, self._delete_collection(kind, route, query)
        if verb == "watch":
            raise _StatusError(405, "MethodNotAllowed", "watch is not implemented by the fake")
        raise _StatusError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

    def _existing(self, kind: ResourceKind, route: _Route) -> tuple[StoreKey, _Entry | None]:
        assert route.name is not None
        key = self._key(kind, route.namespace, route.name)
        return key, self._store.get(key)

    def _get(self, kind: ResourceKind, route: _Route) -> JsonDict:
        _, entry = self._existing(kind, route)
        if entry is None:
            raise _not_found(kind, route.name or "")
        return self._render(kind, entry)

    def _select(
        self, kind: ResourceKind, namespace: str | None, query: dict[str, str]
    ) -> Iterator[tuple[StoreKey, _Entry]]:
        labels = _label_selector(query.get("labelSelector", ""))
        fields = _field_selector(query.get("fieldSelector", ""))
        for key, entry in sorted(self._store.items()):
            if key[0] != kind.plural or (namespace is not None and key[1] != namespace):
                continue
            if labels(entry.obj["metadata"].get("labels") or {}) and fields(entry.obj):
                yield key, entry

    def _list_body(self, kind: ResourceKind, items: list[JsonDict]) -> JsonDict:
        if kind.crd is None:  # built-in list items carry no apiVersion/kind
            for item in items:
                item.pop("apiVersion", None)
                item.pop("kind", None)
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": str(self._resource_version)},
            "items": items,
        }

    def _list(self, kind: ResourceKind, route: _Route, query: dict[str, str]) -> JsonDict:
        items = [
            self._render(kind, entry) for _, entry in self._select(kind, route.namespace, query)
        ]
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0)
        end = start + limit if limit > 0 else len(items)
        body = self._list_body(kind, items[start:end])
        if end < len(items):
            body["metadata"]["continue"] = str(end)
            body["metadata"]["remainingItemCount"] = len(items) - end
        return body

    def _check_identity(self, kind: ResourceKind, route: _Route, obj: JsonDict) -> JsonDict:
        """Check a body's kind, name and namespace against the URL; returns its metadata."""
        if (
            obj.get("kind", kind.kind) != kind.kind
            or obj.get("apiVersion", kind.api_version) != kind.api_version
        ):
            raise _bad_request(
                f"the API version in the data ({obj.get('apiVersion')}) and kind "
                f"({obj.get('kind')}) do not match {kind.api_version}, Kind={kind.kind}"
            )
        metadata = obj.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise _bad_request("metadata must be an object")
        if route.name is not None and metadata.get("name", route.name) != route.name:
            raise _bad_request(
                f"the name of the object ({metadata['name']}) does not match the name on the "
                f"URL ({route.name})"
            )
        if kind.namespaced and metadata.get("namespace", route.namespace) != route.namespace:
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        return metadata

    def _check_precondition(self, kind: ResourceKind, body: JsonDict, old: _Entry) -> None:
        wanted = _get_path(body, ("metadata", "resourceVersion"), None)
        if wanted is not None and wanted != old.obj["metadata"]["resourceVersion"]:
            name = old.obj["metadata"]["name"]
            raise _conflict(
                kind,
                name,
                f'Operation cannot be fulfilled on {kind.group_resource} "{name}": the object has '
                "been modified; please apply your changes to the latest version and try again",
            )

    def _prepare(
        self, kind: ResourceKind, route: _Route, new: JsonDict, old: _Entry | None
    ) -> JsonDict:
        """Fix up server-owned parts of ``new`` before it is validated and stored."""
        metadata = new["metadata"]
        for field in _SERVER_METADATA:
            metadata.pop(field, None)
        if route.name is not None:
            metadata["name"] = route.name
        if kind.namespaced:
            metadata["namespace"] = route.namespace
        else:
            metadata.pop("namespace", None)
        if kind.has_status:
            new.pop("status", None)
            if old is not None and "status" in old.obj:
                new["status"] = copy.deepcopy(old.obj["status"])
        _validate(kind, new)
        return new

    def _require_namespace(self, kind: ResourceKind, route: _Route) -> None:
        if kind.namespaced and route.namespace and not self._namespace_exists(route.namespace):
            raise _not_found(KINDS["namespaces"], route.namespace)

    @staticmethod
    def _updated_owners(
        kind: ResourceKind,
        old: _Entry | None,
        new: JsonDict,
        manager: str,
    ) -> dict[ManagerKey, set[FieldPath]]:
        """An Update makes its manager own the leaves it changed, taking them from others."""
        old_obj = old.obj if old is not None else {}
        changed = {
            path
            for path in _managed_paths(kind, new)
            if _get_path(old_obj, path) != _get_path(new, path)
        }
        owners = {m: paths - changed for m, paths in (old.owners if old else {}).items()}
        owners.setdefault((manager, "Update"), set()).update(changed)
        return owners

    def _create(self, kind: ResourceKind, route: _Route, body: JsonDict, manager: str) -> JsonDict:
        metadata = self._check_identity(kind, route, body)
        if metadata.get("resourceVersion"):
            raise _bad_request("resourceVersion should not be set on objects to be created")
        if not metadata.get("name"):
            if not metadata.get("generateName"):
                raise _invalid(
                    kind, "", ["metadata.name: Required value: name or generateName is required"]
                )
            metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
        name = metadata["name"]
        self._require_namespace(kind, route)
        new = self._prepare(kind, route._replace(name=name), body, None)
        key = self._key(kind, route.namespace, name)
        if key in self._store:
            raise _StatusError(
                409,
                "AlreadyExists",
                f'{kind.group_resource} "{name}" already exists',
                _details(kind, name),
            )
        return self._commit(kind, key, None, new, self._updated_owners(kind, None, new, manager))

    def _update(self, kind: ResourceKind, route: _Route, body: JsonDict, manager: str) -> JsonDict:
        self._check_identity(kind, route, body)
        key, old = self._existing(kind, route)
        if old is None:
            raise _not_found(kind, route.name or "")
        if kind.crd is not None and not _get_path(body, ("metadata", "resourceVersion"), None):
            raise _invalid(
                kind,
                route.name or "",
                ["metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"],
            )
        self._check_precondition(kind, body, old)
        new = self._prepare(kind, route, body, old)
        return self._commit(kind, key, old, new, self._updated_owners(kind, old, new, manager))

    def _patch(
        self,
        kind: ResourceKind,
        route: _Route,
        content_type: str,
        body: bytes,
        query: dict[str, str],
        manager: str,
    ) -> JsonDict:
        if content_type == "application/strategic-merge-patch+json" and kind.crd is not None:
            raise _unsupported_media()
        if content_type not in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            raise _unsupported_media()
        if "force" in query:
            raise _invalid_patch_options(
                "force: Forbidden: may not be specified for non-apply patch"
            )
        patch = _decode(body)
        key, old = self._existing(kind, route)
        if old is None:
            raise _not_found(kind, route.name or "")
        self._check_precondition(kind, patch, old)
        new = _merge_patch(old.obj, patch)
        if not isinstance(new.get("metadata"), dict):
            raise _bad_request("metadata must be an object")
        new = self._prepare(kind, route, new, old)
        return self._commit(kind, key, old, new, self._updated_owners(kind, old, new, manager))

    def _apply(
        self, kind: ResourceKind, route: _Route, body: bytes, query: dict[str, str]
    ) -> tuple[int, JsonDict]:
        manager = query.get("fieldManager")
        if not manager:
            raise _invalid_patch_options(
                "fieldManager: Required value: is required for apply patch"
            )
        force = query.get("force") in ("true", "1")
        applied = _decode(body, allow_yaml=True)
        if "apiVersion" not in applied or "kind" not in applied:
            raise _bad_request("apiVersion and kind must be set in an apply patch")
        self._check_identity(kind, route, applied)
        key, old = self._existing(kind, route)
        if old is None:
            self._authorize("create", route)
            self._require_namespace(kind, route)
        else:
            self._check_precondition(kind, applied, old)
        applied = self._prepare(kind, route, applied, None)
        me: ManagerKey = (manager, "Apply")
        old_obj = old.obj if old is not None else {"metadata": {}}
        owners = {m: set(paths) for m, paths in (old.owners if old else {}).items()}
        sent = _managed_paths(kind, applied)
        changing = {path for path in sent if _get_path(old_obj, path) != _get_path(applied, path)}
        conflicts = sorted(
            (m, path)
            for m, paths in owners.items()
            if m[0] != manager
            for path in changing & paths
        )
        if conflicts and not force:
            detail = "; ".join(f'conflict with "{m[0]}": .{".".join(p)}' for m, p in conflicts)
            plural = "conflict" if len(conflicts) == 1 else "conflicts"
            raise _conflict(
                kind, route.name or "", f"Apply failed with {len(conflicts)} {plural}: {detail}"
            )
        for m in owners:
            if m != me:
                owners[m] -= changing
        new = copy.deepcopy(old_obj)
        others = set().union(*(paths for m, paths in owners.items() if m != me))
        for path in owners.get(me, set()) - sent:
            if not any(other[: len(path)] == path for other in others):
                _remove_path(new, path)
        new = _merge_patch(new, applied)
        owners[me] = sent
        new = self._prepare(kind, route, new, old)
        return (200 if old else 201), self._commit(kind, key, old, new, owners)

    def _delete(self, kind: ResourceKind, route: _Route) -> JsonDict:
        key, entry = self._existing(kind, route)
        if entry is None:
            raise _not_found(kind, route.name or "")
        self._remove(key)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {**_details(kind, route.name), "uid": entry.obj["metadata"]["uid"]},
        }

    def _delete_collection(
        self, kind: ResourceKind, route: _Route, query: dict[str, str]
    ) -> JsonDict:
        selected = list(self._select(kind, route.namespace, query))
        items = [self._render(kind, entry) for _, entry in selected]
        for key, _ in selected:
            self._remove(key)
        return self._list_body(kind, items)


def _unsupported_media() -> _StatusError:
    return _StatusError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        "application/merge-patch+json, application/apply-patch+yaml (and "
        "application/strategic-merge-patch+json for built-in kinds); json-patch is not "
        "implemented by the fake",
    )


def _invalid_patch_options(cause: str) -> _StatusError:
    return _StatusError(
        422,
        "Invalid",
        f'PatchOptions.meta.k8s.io "" is invalid: {cause}',
        {"group": "meta.k8s.io", "kind": "PatchOptions"},
    )


def _decode(body: bytes, allow_yaml: bool = False) -> JsonDict:
    try:
        value = json.loads(body or b"null")
    except ValueError:
        if not allow_yaml:
            raise _bad_request("the request body is not valid JSON") from None
        try:
            value = yaml.safe_load(body)
        except yaml.YAMLError:
            raise _bad_request("the request body is not valid YAML") from None
    if not isinstance(value, dict):
        raise _bad_request("the request body must be a JSON object")
    return value


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # an idle connection must not keep server_close() waiting

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = cast("_HTTPServer", self.server).fake.handle(
            self.command,
            self.path,
            self.headers.get("Content-Type", ""),
            body,
            self.headers.get("User-Agent", ""),
        )
        if isinstance(payload, str):
            data, content_type = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # so that server_close() joins the handler threads
    block_on_close = True

    def __init__(self, fake: FakeKubeServer) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can take seconds without DNS.
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]
