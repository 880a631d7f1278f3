// Command istio-check asks Istio's own code about AuthorizationPolicies, in-process, with no cluster:
//
//   - check: Istio's CRD structural schema and CEL rules (pkg/config/crd over the CRD file shipped in
//     the istio.io/istio module) and istiod's validating webhook (its real HTTP handler, fed an
//     AdmissionReview), then istiod's translation of each policy for ztunnel (the ambient
//     PolicyCollections pipeline, which calls convertAuthorizationPolicy). With --ambient-dry-run,
//     as istiod does when run with AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY=true (dry-run
//     policies are then sent to ztunnel, marked dry-run, instead of being held back).
//   - waypoint: the Envoy RBAC HTTP filters istiod gives a waypoint for each Service that policies
//     attach to (authz.NewBuilderForService(...).BuildHTTP, the call listener_waypoint.go makes, with
//     the waypoint's own attachment check), as JSON Envoy can load.
//
// Input: YAML (one or many documents) or JSON (an object, an array, or a v1 List), from files or
// stdin ("-"). Output: one JSON document on stdout. Exit status: 0 when the run completed (the
// verdicts are in the output), 2 for bad usage or unreadable input.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	kubeyaml "k8s.io/apimachinery/pkg/util/yaml"

	securityapi "istio.io/api/security/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pilot/pkg/features"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/networking"
	"istio.io/istio/pilot/pkg/networking/plugin/authz"
	"istio.io/istio/pilot/pkg/serviceregistry/ambient"
	"istio.io/istio/pilot/pkg/serviceregistry/provider"
	"istio.io/istio/pkg/config/crd"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/config/schema/collections"
	"istio.io/istio/pkg/kube/krt"
	"istio.io/istio/pkg/log"
	"istio.io/istio/pkg/webhooks/validation/server"
	"istio.io/istio/pkg/workloadapi/security"
)

const usage = `istio-check: ask Istio's own code (istio.io/istio, in-process) about AuthorizationPolicies.

Usage:
  istio-check check    [--crds FILE] [--ambient-dry-run] [FILE|-]...
  istio-check waypoint [--waypoint NAME] [--waypoint-namespace NS] [--service NS/NAME]... [FILE|-]...
  istio-check --help

check     For every object: Istio's CRD schema + CEL validation ("crd"), istiod's validating
          webhook ("webhook": allowed, errors, warnings) and, for AuthorizationPolicies, istiod's
          translation for ztunnel ("ztunnel": the Authorization ztunnel receives, istiod's status
          message, dropped rules, deny_all, namespace_wide, dry_run; for_waypoint: the policy
          has targetRefs, so ztunnel never enforces it whatever it is sent).
waypoint  For every Service a policy targets (or each --service), the policies attached to it by
          the waypoint's attachment check and the Envoy RBAC HTTP filters istiod builds for it
          ("http_filters", Envoy's JSON with @type).

Input is YAML (one or many documents) or JSON (object, array or List); "-" or no file reads stdin.
Output is one JSON document on stdout. Exit status 0 when the run completed, 2 on bad input.

Options:
  --crds FILE              CRD file for "check" (default: crd-all.gen.yaml beside the binary)
  --ambient-dry-run        "check" as istiod with AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY=true
  --waypoint NAME          the waypoint Gateway's name (default: waypoint)
  --waypoint-namespace NS  the waypoint's namespace (default: each Service's namespace)
  --service NS/NAME        a Service to build for (repeatable; default: every Service targeted)
  --root-namespace NS      Istio's root namespace (default: istio-system)
`

func main() {
	// Istio's packages log at info level to stderr; the caller only wants our JSON.
	for _, s := range log.Scopes() {
		s.SetOutputLevel(log.ErrorLevel)
	}
	if len(os.Args) < 2 || os.Args[1] == "--help" || os.Args[1] == "-h" || os.Args[1] == "help" {
		fmt.Print(usage)
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	var out any
	var err error
	switch os.Args[1] {
	case "check":
		out, err = runCheck(os.Args[2:])
	case "waypoint":
		out, err = runWaypoint(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (want check or waypoint; see --help)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "istio-check:", err)
		os.Exit(2)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "istio-check:", err)
		os.Exit(2)
	}
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// readObjects decodes every object of every input, flattening arrays and v1 Lists.
func readObjects(paths []string) ([]map[string]any, error) {
	if len(paths) == 0 {
		paths = []string{"-"}
	}
	var objs []map[string]any
	for _, p := range paths {
		var r io.Reader
		if p == "-" {
			r = os.Stdin
		} else {
			f, err := os.Open(p)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			r = f
		}
		dec := kubeyaml.NewYAMLOrJSONDecoder(r, 4096)
		for {
			var doc any
			if err := dec.Decode(&doc); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return nil, fmt.Errorf("%s: %v", p, err)
			}
			flatten(doc, &objs)
		}
	}
	return objs, nil
}

func flatten(doc any, objs *[]map[string]any) {
	switch d := doc.(type) {
	case []any:
		for _, item := range d {
			flatten(item, objs)
		}
	case map[string]any:
		if items, ok := d["items"].([]any); ok && strings.HasSuffix(fmt.Sprint(d["kind"]), "List") {
			for _, item := range items {
				flatten(item, objs)
			}
			return
		}
		*objs = append(*objs, d)
	}
}

func errorStrings(err error) []string {
	if err == nil {
		return []string{}
	}
	return []string{err.Error()}
}

// ---------------------------------------------------------------------------------------------
// check

type webhookResult struct {
	Allowed  bool     `json:"allowed"`
	Errors   []string `json:"errors"`
	Warnings []string `json:"warnings"`
}

type ztunnelResult struct {
	// Applies is false when ztunnel is not given the policy at all (a targetRef policy is for waypoints).
	Applies bool `json:"applies"`
	// Authorization is what ztunnel receives (protojson of istio.security.Authorization), or null.
	Authorization json.RawMessage `json:"authorization"`
	Status        *statusMessage  `json:"status"`
	// Rules in the spec, and rule groups ztunnel receives: a rule istiod could not express is dropped.
	SpecRules     int    `json:"spec_rules"`
	Groups        int    `json:"groups"`
	DroppedRules  int    `json:"dropped_rules"`
	DenyAll       bool   `json:"deny_all"`
	NamespaceWide bool   `json:"namespace_wide"`
	Scope         string `json:"scope"`
	// DryRun: ztunnel receives the policy marked dry-run (1.29+ logs it; older ztunnel enforces it).
	DryRun bool `json:"dry_run"`
	// ForWaypoint: the policy has targetRefs; ztunnel never enforces it, whatever istiod says.
	ForWaypoint bool `json:"for_waypoint"`
}

type statusMessage struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

type objectResult struct {
	Kind      string         `json:"kind"`
	Namespace string         `json:"namespace"`
	Name      string         `json:"name"`
	CRD       []string       `json:"crd_errors"`
	Webhook   webhookResult  `json:"webhook"`
	Ztunnel   *ztunnelResult `json:"ztunnel,omitempty"`
	OK        bool           `json:"ok"`
}

type checkOutput struct {
	Objects []objectResult `json:"objects"`
	OK      bool           `json:"ok"`
}

func runCheck(args []string) (any, error) {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	crdFile := fs.String("crds", "", "CRD file")
	rootNS := fs.String("root-namespace", "istio-system", "root namespace")
	ambientDryRun := fs.Bool("ambient-dry-run", false, "as istiod with AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY=true")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	// istiod reads the variable once at start-up (only with ambient enabled) into this feature flag,
	// which convertAuthorizationPolicy consults for every policy.
	features.EnableWdsDryRunAuthzPol = *ambientDryRun
	if *crdFile == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		*crdFile = filepath.Join(filepath.Dir(exe), "crd-all.gen.yaml")
	}
	validator, err := crd.NewValidatorFromFiles(*crdFile)
	if err != nil {
		return nil, fmt.Errorf("loading CRDs from %s: %v", *crdFile, err)
	}
	objs, err := readObjects(fs.Args())
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	if _, err := server.New(server.Options{Schemas: collections.PilotGatewayAPI(), DomainSuffix: "cluster.local", Mux: mux}); err != nil {
		return nil, err
	}
	ztunnel, err := convertForZtunnel(objs, *rootNS)
	if err != nil {
		return nil, err
	}
	out := checkOutput{Objects: []objectResult{}, OK: true}
	for i, o := range objs {
		u := &unstructured.Unstructured{Object: o}
		r := objectResult{Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName()}
		r.CRD = errorStrings(validator.ValidateCustomResource(u))
		r.Webhook = admit(mux, u)
		r.Ztunnel = ztunnel[i]
		r.OK = len(r.CRD) == 0 && r.Webhook.Allowed && len(r.Webhook.Warnings) == 0
		if z := r.Ztunnel; z != nil && z.Applies && !z.ForWaypoint {
			r.OK = r.OK && z.Status == nil && z.DroppedRules == 0 && !z.DenyAll && !z.NamespaceWide
		}
		out.OK = out.OK && r.OK
		out.Objects = append(out.Objects, r)
	}
	return out, nil
}

// admit sends the object to istiod's validating webhook handler as the API server would on create.
func admit(mux *http.ServeMux, u *unstructured.Unstructured) webhookResult {
	res := webhookResult{Errors: []string{}, Warnings: []string{}}
	raw, err := json.Marshal(u.Object)
	if err != nil {
		res.Errors = append(res.Errors, err.Error())
		return res
	}
	gvk := u.GroupVersionKind()
	review := admissionv1.AdmissionReview{}
	review.APIVersion = "admission.k8s.io/v1"
	review.Kind = "AdmissionReview"
	review.Request = &admissionv1.AdmissionRequest{
		UID:       types.UID("istio-check"),
		Kind:      metav1.GroupVersionKind{Group: gvk.Group, Version: gvk.Version, Kind: gvk.Kind},
		Namespace: u.GetNamespace(),
		Name:      u.GetName(),
		Operation: admissionv1.Create,
		Object:    runtime.RawExtension{Raw: raw},
	}
	body, _ := json.Marshal(review)
	req := httptest.NewRequest(http.MethodPost, "/validate", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		res.Errors = append(res.Errors, fmt.Sprintf("webhook HTTP %d: %s", rec.Code, strings.TrimSpace(rec.Body.String())))
		return res
	}
	var answer admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil || answer.Response == nil {
		res.Errors = append(res.Errors, fmt.Sprintf("webhook answer unreadable: %v", err))
		return res
	}
	res.Allowed = answer.Response.Allowed
	if answer.Response.Result != nil && answer.Response.Result.Message != "" {
		res.Errors = append(res.Errors, answer.Response.Result.Message)
	}
	res.Warnings = append(res.Warnings, answer.Response.Warnings...)
	return res
}

// convertForZtunnel runs istiod's ambient policy pipeline (ambient.PolicyCollections, whose
// AuthorizationPolicy collection calls convertAuthorizationPolicy) over the AuthorizationPolicies,
// returning one result per object (nil for other kinds).
func convertForZtunnel(objs []map[string]any, rootNS string) ([]*ztunnelResult, error) {
	results := make([]*ztunnelResult, len(objs))
	var policies []*securityclient.AuthorizationPolicy
	index := map[types.NamespacedName]int{}
	for i, o := range objs {
		u := &unstructured.Unstructured{Object: o}
		if u.GetKind() != "AuthorizationPolicy" || !strings.HasPrefix(u.GetAPIVersion(), "security.istio.io/") {
			continue
		}
		raw, err := json.Marshal(o)
		if err != nil {
			return nil, err
		}
		p := &securityclient.AuthorizationPolicy{}
		if err := json.Unmarshal(raw, p); err != nil {
			results[i] = &ztunnelResult{Status: &statusMessage{Reason: "Unreadable", Message: err.Error()}}
			continue
		}
		key := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
		if _, dup := index[key]; dup {
			return nil, fmt.Errorf("AuthorizationPolicy %s appears twice in the input", key)
		}
		index[key] = i
		policies = append(policies, p)
		results[i] = &ztunnelResult{SpecRules: len(p.Spec.Rules), ForWaypoint: len(model.GetTargetRefs(&p.Spec)) > 0}
	}
	if len(policies) == 0 {
		return results, nil
	}
	// One pipeline per policy: istiod's collection keys its output by the Authorization's name, and a
	// policy it holds back (a dry-run one without AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY) has no
	// Authorization, so in one shared collection all such policies would share the key "/" and all
	// but one would vanish from the answer.
	var converted []model.WorkloadAuthorization
	for _, p := range policies {
		out, err := convertPolicies([]*securityclient.AuthorizationPolicy{p}, rootNS)
		if err != nil {
			return nil, err
		}
		converted = append(converted, out...)
	}
	for _, wa := range converted {
		key := types.NamespacedName{Namespace: wa.Source.Namespace, Name: wa.Source.Name}
		i, ok := index[key]
		if !ok {
			return nil, fmt.Errorf("istiod returned a policy for %s, which is not in the input", key)
		}
		r := results[i]
		r.Applies = true
		if wa.Binding.Status != nil {
			r.Status = &statusMessage{Reason: wa.Binding.Status.Reason, Message: wa.Binding.Status.Message}
		}
		if a := wa.Authorization; a != nil {
			js, err := protojson.Marshal(a)
			if err != nil {
				return nil, err
			}
			r.Authorization = js
			r.Groups = len(a.Groups)
			r.DroppedRules = r.SpecRules - r.Groups
			r.Scope = a.Scope.String()
			r.DryRun = a.DryRun
			r.NamespaceWide = a.Scope != security.Scope_WORKLOAD_SELECTOR
			// An ALLOW policy with no rule group allows nothing: every workload it selects denies all.
			r.DenyAll = a.Action == security.Action_ALLOW && len(a.Groups) == 0
		}
	}
	for _, r := range results {
		if r != nil && r.Authorization == nil {
			r.Authorization = json.RawMessage("null")
		}
	}
	return results, nil
}

// convertPolicies runs istiod's ambient policy pipeline over these policies alone.
func convertPolicies(policies []*securityclient.AuthorizationPolicy, rootNS string) ([]model.WorkloadAuthorization, error) {
	stop := make(chan struct{})
	defer close(stop)
	opts := krt.NewOptionsBuilder(stop, "istio-check", nil)
	meshCfg := mesh.DefaultMeshConfig()
	meshCfg.RootNamespace = rootNS
	meshSingleton := krt.NewStatic[ambient.MeshConfig](&ambient.MeshConfig{MeshConfig: meshCfg}, true, opts.WithName("Mesh")...)
	authz := krt.NewStaticCollection[*securityclient.AuthorizationPolicy](nil, policies, opts.WithName("AuthorizationPolicies")...)
	peerAuths := krt.NewStaticCollection[*securityclient.PeerAuthentication](nil, nil, opts.WithName("PeerAuthentications")...)
	waypoints := krt.NewStaticCollection[ambient.Waypoint](nil, nil, opts.WithName("Waypoints")...)
	converted, _ := ambient.PolicyCollections(authz, peerAuths, meshSingleton, waypoints, opts, ambient.FeatureFlags{})
	if !converted.WaitUntilSynced(stop) {
		return nil, errors.New("istiod's policy collection did not sync")
	}
	return converted.List(), nil
}

// ---------------------------------------------------------------------------------------------
// waypoint

type serviceResult struct {
	Service     string            `json:"service"`
	Waypoint    string            `json:"waypoint"`
	Policies    []string          `json:"policies"`
	HTTPFilters []json.RawMessage `json:"http_filters"`
}

type waypointOutput struct {
	Services []serviceResult `json:"services"`
}

func runWaypoint(args []string) (any, error) {
	fs := flag.NewFlagSet("waypoint", flag.ContinueOnError)
	waypointName := fs.String("waypoint", "waypoint", "waypoint name")
	waypointNS := fs.String("waypoint-namespace", "", "waypoint namespace")
	rootNS := fs.String("root-namespace", "istio-system", "root namespace")
	var services stringList
	fs.Var(&services, "service", "NS/NAME")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	objs, err := readObjects(fs.Args())
	if err != nil {
		return nil, err
	}
	all := &model.AuthorizationPolicies{NamespaceToPolicies: map[string][]model.AuthorizationPolicy{}, RootNamespace: *rootNS}
	targeted := map[string]bool{}
	for _, o := range objs {
		u := &unstructured.Unstructured{Object: o}
		if u.GetKind() != "AuthorizationPolicy" {
			continue
		}
		specRaw, err := json.Marshal(o["spec"])
		if err != nil {
			return nil, err
		}
		spec := &securityapi.AuthorizationPolicy{}
		if err := protojson.Unmarshal(specRaw, spec); err != nil {
			return nil, fmt.Errorf("AuthorizationPolicy %s/%s: %v", u.GetNamespace(), u.GetName(), err)
		}
		all.NamespaceToPolicies[u.GetNamespace()] = append(all.NamespaceToPolicies[u.GetNamespace()], model.AuthorizationPolicy{
			Name: u.GetName(), Namespace: u.GetNamespace(), Annotations: u.GetAnnotations(), Spec: spec,
		})
		for _, ref := range model.GetTargetRefs(spec) {
			if (ref.GetGroup() == "" || ref.GetGroup() == "core") && ref.GetKind() == "Service" {
				targeted[u.GetNamespace()+"/"+ref.GetName()] = true
			}
		}
	}
	if len(services) == 0 {
		for s := range targeted {
			services = append(services, s)
		}
		sort.Strings(services)
	}
	push := model.NewPushContext()
	push.Mesh = mesh.DefaultMeshConfig()
	push.Mesh.RootNamespace = *rootNS
	push.AuthzPolicies = all
	out := waypointOutput{Services: []serviceResult{}}
	for _, s := range services {
		ns, name, ok := strings.Cut(s, "/")
		if !ok || ns == "" || name == "" {
			return nil, fmt.Errorf("--service %q: want NAMESPACE/NAME", s)
		}
		wns := *waypointNS
		if wns == "" {
			wns = ns
		}
		// The waypoint proxy as istiod sees it: a Waypoint node whose Gateway is named by its label.
		proxy := &model.Proxy{
			Type:            model.Waypoint,
			ConfigNamespace: wns,
			Labels:          map[string]string{"gateway.networking.k8s.io/gateway-name": *waypointName},
			Metadata:        &model.NodeMetadata{Namespace: wns},
		}
		svc := &model.Service{Attributes: model.ServiceAttributes{
			Name: name, Namespace: ns, ServiceRegistry: provider.Kubernetes,
		}}
		r := serviceResult{Service: s, Waypoint: wns + "/" + *waypointName, Policies: []string{}, HTTPFilters: []json.RawMessage{}}
		matcher := model.PolicyMatcherForProxy(proxy).WithService(svc).WithRootNamespace(*rootNS)
		attached := all.ListAuthorizationPolicies(matcher)
		for _, group := range [][]model.AuthorizationPolicy{attached.Deny, attached.Allow, attached.Audit, attached.Custom} {
			for _, p := range group {
				r.Policies = append(r.Policies, p.Namespace+"/"+p.Name)
			}
		}
		for _, f := range authz.NewBuilderForService(authz.Local, push, proxy, true, svc).BuildHTTP(networking.ListenerClassSidecarInbound) {
			js, err := protojson.Marshal(f)
			if err != nil {
				return nil, err
			}
			r.HTTPFilters = append(r.HTTPFilters, js)
		}
		out.Services = append(out.Services, r)
	}
	return out, nil
}
