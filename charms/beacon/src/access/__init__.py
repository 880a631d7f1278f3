"""The access engine: who may reach whom in the model, and why, by Istio's ambient semantics.

Modules, in the order data flows through them:

- ``access.cluster`` reads the model from Kubernetes and the relations (the only module here
  that talks to a client);
- ``access.parsing`` reads AuthorizationPolicy manifests; ``access.model`` holds the apps, the
  waypoint, the questions and the answers;
- ``access.matching`` matches rules in three-valued logic; ``access.evaluation`` decides a
  request point by point; ``access.explanation`` words the nearest miss when nothing allows it;
- ``access.map`` builds the access map and the answer to "may A reach B"; ``access.report``
  lays them out; ``access.actions`` serves the charm's ``access-map`` and ``explain`` actions.

The engine's inputs are plain values (namespace and workload labels, the waypoint's readiness,
every AuthorizationPolicy in the namespace, what related apps requested and what was refused);
only ``access.cluster`` (and ``access.actions``, through it) talks to Kubernetes.

The semantics followed (Istio 1.29, ambient data plane):

- A request through an app's Service that is bound to a ready waypoint is checked twice: by the
  waypoint (Envoy) against the policies whose ``targetRefs`` name that Service or the waypoint's
  Gateway, with every L7 field; then by ztunnel in front of the pods, against the policies that
  select the pods (``selector``, or none for the whole namespace), where the caller is the
  waypoint's own identity. A request straight to the pods (or through a Service without a ready
  waypoint) is only checked by ztunnel, with the caller's identity.
- At each point: a CUSTOM policy that applies hands the decision to an external authorizer; a
  matching DENY policy denies; then, if no ALLOW policy applies, the request is allowed, else it
  must match one.
- ztunnel sees connections, not requests. As istiod converts policies for it, an ALLOW rule that
  names any HTTP attribute (hosts, methods, paths, request principals, remote IP blocks, or a
  ``when`` key other than source.ip, source.namespace, source.principal, destination.ip,
  destination.port) is dropped, so it matches nothing (fail closed); in a DENY rule those parts
  are ignored, so the rule denies more. ztunnel does not support CUSTOM (istiod skips it).
- Pods not on the mesh are not enforced at all.

What it cannot evaluate (CUSTOM's external authorizer, source IP blocks, request principals,
``when`` keys it does not model, an attribute the question left out) makes the answer "unknown"
with the reason; it never guesses.
"""
