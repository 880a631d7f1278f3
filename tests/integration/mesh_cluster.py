"""Read-only views of the Kubernetes cluster behind the Juju controller, through lightkube.

The integration tests look at what the charms did to the cluster (labels, waypoint, policies) with
the same client library the charms use. The client is configured from, in order: the file named by
`KUBECONFIG`, `~/.kube/config`, or the output of `microk8s config` (also tried through
`sudo -n`, for a user whose microk8s group membership is not active in this shell yet).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import lightkube
from lightkube.core.client import LabelSelector
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment, StatefulSet
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import ConfigMap, Namespace, Pod, Service
from mesh_probe import eventually

AuthorizationPolicy = create_namespaced_resource(
    "security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"
)
Gateway = create_namespaced_resource("gateway.networking.k8s.io", "v1", "Gateway", "gateways")

DATAPLANE_MODE = "istio.io/dataplane-mode"
USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
NAMESPACE_OWNER = "charms.canonical.com/istio.io.waypoint.managed-by"
MANAGED_BY = "charms.canonical.com/service-mesh.managed-by"
"""Ownership label on the beacon's Gateway, HPA and AuthorizationPolicies: `<model>.<app>`."""
REQUESTED_BY = "charms.canonical.com/service-mesh.requested-by"
"""Label on an AuthorizationPolicy naming the app whose request it implements."""
WAYPOINT_ACCESS_FOR = "charms.canonical.com/service-mesh.waypoint-access-for"
"""Annotation on the beacon's own `<app>-from-waypoint` policy (the waypoint's hop to `<app>`)."""
MESH_LABEL_KEYS = (DATAPLANE_MODE, USE_WAYPOINT, USE_WAYPOINT_NAMESPACE)
MODEL_OPERATOR_SELECTOR = {"juju-modeloperator": "modeloperator"}
"""The model operator's pod labels in models of older Juju only (see model_operator_selector)."""
MODEL_OPERATOR_SERVICE = "modeloperator"
"""The Service Juju creates in front of the model operator, in every model."""
APP_NAME_LABEL = "app.kubernetes.io/name"
"""The label Juju puts on the pods of an app, valued with the app's name."""
REDIRECTION = "ambient.istio.io/redirection"
"""The annotation that Istio's CNI agent puts on a pod once its traffic is redirected to ztunnel.

A label only asks for ambient; this annotation (value `enabled`) says the pod really is captured.
"""


class KubeconfigNotFoundError(RuntimeError):
    """No kubeconfig for the cluster could be found."""


def kubeconfig_path(scratch_dir: Path) -> Path:
    """Return a kubeconfig file for the cluster, writing one into `scratch_dir` if needed.

    Raises:
        KubeconfigNotFoundError: when neither a kubeconfig file nor `microk8s config` is available.
    """
    if env := os.environ.get("KUBECONFIG"):
        return Path(env)
    default = Path.home() / ".kube" / "config"
    if default.is_file():
        return default
    tried = [f"KUBECONFIG (unset), {default} (missing)"]
    if shutil.which("microk8s"):
        for command in (["microk8s", "config"], ["sudo", "-n", "microk8s", "config"]):
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode == 0 and done.stdout.strip():
                path = scratch_dir / "kubeconfig"
                path.write_text(done.stdout)
                return path
            tried.append(f"`{' '.join(command)}` (exit {done.returncode}: {done.stderr.strip()})")
    else:
        tried.append("microk8s (not on PATH)")
    raise KubeconfigNotFoundError(
        "no kubeconfig for the cluster; tried " + "; ".join(tried) + ". "
        "Write one with `mkdir -p ~/.kube && sudo microk8s config > ~/.kube/config` "
        "or set KUBECONFIG."
    )


def make_client(scratch_dir: Path | None = None) -> lightkube.Client:
    """A lightkube client for the cluster (see `kubeconfig_path`)."""
    scratch = scratch_dir or Path(tempfile.mkdtemp(prefix="mesh-it-kube-"))
    config = lightkube.KubeConfig.from_file(kubeconfig_path(scratch))
    return lightkube.Client(config=config, field_manager="mesh-integration-tests")


def waypoint_name(model: str, beacon_app: str) -> str:
    """Name of the waypoint Gateway a beacon creates (the test names keep it under 63 chars)."""
    name = f"{model}-{beacon_app}-waypoint"
    assert len(name) <= 63, f"test model/app names too long for an unhashed waypoint name: {name}"
    return name


def expected_consumer_labels(model: str, beacon_app: str) -> dict[str, str]:
    """The labels a beacon publishes to its consumers when the model is not on the mesh."""
    return {
        DATAPLANE_MODE: "ambient",
        USE_WAYPOINT: waypoint_name(model, beacon_app),
        USE_WAYPOINT_NAMESPACE: model,
    }


def on_pod_template(labels: Mapping[str, str]) -> dict[str, str]:
    """The share of published labels a consumer puts on its pod template (Istio reads them there).

    The waypoint labels are read on Services only (the beacon's waypoint is for Services).
    """
    return {k: v for k, v in labels.items() if k not in (USE_WAYPOINT, USE_WAYPOINT_NAMESPACE)}


def on_service(labels: Mapping[str, str]) -> dict[str, str]:
    """The share of published labels a consumer puts on its Service (Istio reads them there)."""
    return {k: v for k, v in labels.items() if k != DATAPLANE_MODE}


def expected_namespace_labels(model: str, beacon_app: str) -> dict[str, str]:
    """The labels a beacon puts on its namespace when the whole model is on the mesh."""
    return {
        DATAPLANE_MODE: "ambient",
        USE_WAYPOINT: waypoint_name(model, beacon_app),
        NAMESPACE_OWNER: owner(model, beacon_app),
    }


def _labels(metadata: object) -> dict[str, str]:
    labels = getattr(metadata, "labels", None)
    return dict(labels or {})


def pod_template_labels(client: lightkube.Client, app: str, namespace: str) -> dict[str, str]:
    """Labels of the pod template of a Juju app's StatefulSet."""
    sts = client.get(StatefulSet, app, namespace=namespace)
    assert sts.spec is not None
    return _labels(sts.spec.template.metadata)


def service_labels(client: lightkube.Client, app: str, namespace: str) -> dict[str, str]:
    """Labels of a Juju app's Service (named after the app)."""
    return _labels(client.get(Service, app, namespace=namespace).metadata)


def namespace_labels(client: lightkube.Client, namespace: str) -> dict[str, str]:
    """Labels of a namespace."""
    return _labels(client.get(Namespace, namespace).metadata)


def mesh_labels_of(labels: Mapping[str, str]) -> dict[str, str]:
    """The subset of `labels` that puts a pod, Service or namespace on the mesh."""
    return {
        key: value for key, value in labels.items() if key in (*MESH_LABEL_KEYS, NAMESPACE_OWNER)
    }


def get_or_none(
    client: lightkube.Client, resource: type[GenericNamespacedResource], name: str, namespace: str
) -> GenericNamespacedResource | None:
    """A namespaced custom resource, or None when it does not exist."""
    try:
        return client.get(resource, name, namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise


def hpa_or_none(
    client: lightkube.Client, name: str, namespace: str
) -> HorizontalPodAutoscaler | None:
    """A HorizontalPodAutoscaler, or None when it does not exist."""
    try:
        return client.get(HorizontalPodAutoscaler, name, namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise


def deployment_ready_replicas(client: lightkube.Client, name: str, namespace: str) -> int:
    """Ready replicas of a Deployment (0 when it does not exist)."""
    try:
        deployment = client.get(Deployment, name, namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:
            return 0
        raise
    return (deployment.status.readyReplicas or 0) if deployment.status else 0


#: How long a read of the test's own is asked again while the API server sheds load (429, 5xx).
READ_RETRY_TIMEOUT = 60.0


def authorization_policies(
    client: lightkube.Client, namespace: str
) -> list[GenericNamespacedResource]:
    """Every AuthorizationPolicy in a namespace (asked again on a 429 or 5xx, as probes are)."""
    return eventually(
        lambda: list(client.list(AuthorizationPolicy, namespace=namespace)),
        timeout=READ_RETRY_TIMEOUT,
        what=f"list the AuthorizationPolicies of {namespace}",
        retry_on=(),
    )


def owner(model: str, beacon_app: str) -> str:
    """The value of the beacon's ownership labels (`<model>.<app>`; test names stay short)."""
    return f"{model}.{beacon_app}"


def owned_policies(
    client: lightkube.Client, namespace: str, beacon_app: str
) -> list[GenericNamespacedResource]:
    """The AuthorizationPolicies in a namespace that carry a beacon's ownership label."""
    selector: LabelSelector = {MANAGED_BY: owner(namespace, beacon_app)}
    return eventually(
        lambda: list(client.list(AuthorizationPolicy, namespace=namespace, labels=selector)),
        timeout=READ_RETRY_TIMEOUT,
        what=f"list the beacon's AuthorizationPolicies in {namespace}",
        retry_on=(),
    )


def labels_of(resource: object) -> dict[str, str]:
    """The labels of any Kubernetes object read with lightkube."""
    return _labels(getattr(resource, "metadata", None))


def policy_summary(policy: GenericNamespacedResource) -> str:
    """One line naming a policy and its labels, for assertion messages."""
    metadata = policy.metadata
    name = metadata.name if metadata else "?"
    return f"{name} {_labels(metadata)}"


def model_operator_selector(client: lightkube.Client, namespace: str) -> dict[str, str]:
    """The pod selector of Juju's `modeloperator` Service: the model operator's pod labels.

    Which labels those are depends on the Juju that created the model (legacy
    `juju-modeloperator: modeloperator`, or `operator.juju.is/name: modeloperator` with
    `operator.juju.is/target: model`); the Service always says.
    """
    service = client.get(Service, MODEL_OPERATOR_SERVICE, namespace=namespace)
    assert service.spec is not None, f"the {MODEL_OPERATOR_SERVICE} Service has no spec"
    selector = dict(service.spec.selector or {})
    assert selector, f"the {MODEL_OPERATOR_SERVICE} Service in {namespace} selects nothing"
    return selector


def model_operator_policies(
    client: lightkube.Client, namespace: str
) -> list[GenericNamespacedResource]:
    """AuthorizationPolicies that select Juju's model operator pod (as its Service does)."""
    wanted = model_operator_selector(client, namespace)
    found: list[GenericNamespacedResource] = []
    for policy in authorization_policies(client, namespace):
        selector = (policy.get("spec") or {}).get("selector") or {}
        if selector.get("matchLabels") == wanted:
            found.append(policy)
    return found


def labels_configmap(client: lightkube.Client, app: str, namespace: str) -> dict[str, str] | None:
    """The labels a consumer recorded as applied (`juju-service-mesh-<app>-labels`), if any."""
    try:
        configmap = client.get(ConfigMap, f"juju-service-mesh-{app}-labels", namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise
    raw = (configmap.data or {}).get("labels", "{}")
    loaded = json.loads(raw)
    return {str(key): str(value) for key, value in (loaded or {}).items()}


def policy_targets(policy: GenericNamespacedResource) -> set[str]:
    """The app names a policy applies to: its targetRefs Service names, or its selected app."""
    spec = policy.get("spec") or {}
    targets = {str(ref.get("name")) for ref in spec.get("targetRefs") or []}
    match_labels = (spec.get("selector") or {}).get("matchLabels") or {}
    if "app.kubernetes.io/name" in match_labels:
        targets.add(str(match_labels["app.kubernetes.io/name"]))
    return targets


def policy_principals(policy: GenericNamespacedResource) -> set[str]:
    """Every source principal a policy allows."""
    spec = policy.get("spec") or {}
    principals: set[str] = set()
    for rule in spec.get("rules") or []:
        for source in rule.get("from") or []:
            principals.update(str(p) for p in (source.get("source") or {}).get("principals") or [])
    return principals


def policies_for(
    client: lightkube.Client, namespace: str, app: str
) -> list[GenericNamespacedResource]:
    """The AuthorizationPolicies in a namespace that apply to `app`."""
    return [p for p in authorization_policies(client, namespace) if app in policy_targets(p)]


def principal(namespace: str, app: str) -> str:
    """The mesh identity of a Juju app's pods."""
    return f"cluster.local/ns/{namespace}/sa/{app}"


def pod_redirections(
    client: lightkube.Client, namespace: str, selector: Mapping[str, str]
) -> dict[str, str | None]:
    """Each running, non-terminating pod that `selector` picks, with its redirection annotation."""
    found: dict[str, str | None] = {}
    labels: LabelSelector = dict(selector)
    for pod in client.list(Pod, namespace=namespace, labels=labels):
        metadata = pod.metadata
        if metadata is None or metadata.deletionTimestamp is not None:
            continue
        if pod.status is None or pod.status.phase != "Running":
            continue
        found[str(metadata.name)] = (metadata.annotations or {}).get(REDIRECTION)
    return found


def assert_captured(
    client: lightkube.Client,
    namespace: str,
    app: str,
    *,
    captured: bool = True,
    selector: Mapping[str, str] | None = None,
) -> None:
    """Assert that every running pod of `app` is (or, with `captured=False`, is not) on ambient.

    `selector` picks the pods instead of the app's name label (Juju's model operator, say).

    Raises:
        AssertionError: naming the pods that differ (retry it: capture follows labels a moment
            later, and pods restart when their template's labels change).
    """
    pods = pod_redirections(client, namespace, selector or {APP_NAME_LABEL: app})
    assert pods, f"no running pod of {app} in {namespace}"
    if captured:
        wrong = {name: value for name, value in pods.items() if value != "enabled"}
        assert not wrong, f"{app}: pods not captured by ambient ({REDIRECTION}): {wrong}"
    else:
        wrong = {name: value for name, value in pods.items() if value == "enabled"}
        assert not wrong, f"{app}: pods captured by ambient, expected none: {wrong}"


def model_operator_endpoint(client: lightkube.Client, namespace: str) -> tuple[str, int]:
    """Name and first port of the Service in front of Juju's model operator pod."""
    service = client.get(Service, MODEL_OPERATOR_SERVICE, namespace=namespace)
    ports = (service.spec.ports if service.spec else None) or []
    assert ports, f"the {MODEL_OPERATOR_SERVICE} Service in {namespace} has no port"
    return MODEL_OPERATOR_SERVICE, int(ports[0].port)


ISTIOD = "istiod"
"""The Deployment of Istio's control plane, in istio-k8s's model."""
AUTO_ALLOW_WAYPOINT_ENV = "PILOT_AUTO_ALLOW_WAYPOINT_POLICY"
"""istiod's environment variable behind istio-k8s's `auto-allow-waypoint-policy`."""


def hardened_mode_policies(istio_app: str, namespace: str) -> tuple[str, str]:
    """The two allow-nothing policies istio-k8s creates in its namespace for `hardened-mode`."""
    prefix = f"{istio_app}-{namespace}-policy-global-allow-nothing"
    return f"{prefix}-ztunnel", f"{prefix}-waypoint"


def container_env(deployment: Deployment) -> dict[str, str]:
    """The literal environment variables of every container of a Deployment's pod template."""
    env: dict[str, str] = {}
    spec = deployment.spec
    pod = spec.template.spec if spec else None
    for container in (pod.containers if pod else None) or []:
        for variable in container.env or []:
            if variable.value is not None:
                env[variable.name] = variable.value
    return env


def rollout_problem(deployment: Deployment) -> str | None:
    """What keeps a Deployment from running its current template everywhere, or None."""
    metadata, spec, status = deployment.metadata, deployment.spec, deployment.status
    generation = metadata.generation if metadata else None
    wanted = (spec.replicas if spec else None) or 1
    if status is None or status.observedGeneration != generation:
        observed = status.observedGeneration if status else None
        return f"generation {generation} not observed yet (observed {observed})"
    counts = (status.replicas or 0, status.updatedReplicas or 0, status.readyReplicas or 0)
    if counts != (wanted, wanted, wanted):
        return f"replicas/updated/ready {counts}, want {wanted} of each"
    return None


def assert_istio_settings(
    client: lightkube.Client,
    namespace: str,
    istio_app: str,
    *,
    hardened_mode: bool,
    auto_allow_waypoint_policy: bool,
) -> None:
    """Assert that istio-k8s's `hardened-mode` and `auto-allow-waypoint-policy` are in force.

    istio-k8s can be active before what it configured is: `hardened-mode` is in force once its
    two allow-nothing policies exist (and gone once they are), `auto-allow-waypoint-policy` once
    istiod runs, rolled out, with `PILOT_AUTO_ALLOW_WAYPOINT_POLICY=true` (or without it).
    """
    names = hardened_mode_policies(istio_app, namespace)
    present = [n for n in names if get_or_none(client, AuthorizationPolicy, n, namespace)]
    wanted = list(names) if hardened_mode else []
    assert present == wanted, f"hardened-mode={hardened_mode}: allow-nothing policies {present}"
    istiod = client.get(Deployment, ISTIOD, namespace=namespace)
    enabled = container_env(istiod).get(AUTO_ALLOW_WAYPOINT_ENV) == "true"
    assert enabled == auto_allow_waypoint_policy, (
        f"auto-allow-waypoint-policy={auto_allow_waypoint_policy}: istiod has "
        f"{AUTO_ALLOW_WAYPOINT_ENV}={container_env(istiod).get(AUTO_ALLOW_WAYPOINT_ENV)!r}"
    )
    problem = rollout_problem(istiod)
    assert problem is None, f"{ISTIOD} not rolled out: {problem}"
