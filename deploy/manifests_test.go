package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// image is the placeholder image name the Deployments use; docs/kubernetes.md says
// that this repository does not publish it.
const image = "ghcr.io/dotstub/coredns-dotstub:VERSION"

// kinds maps each apiVersion/kind the manifests may use to its Go type.
var kinds = map[string]func() any{
	"v1/ConfigMap":                  func() any { return new(corev1.ConfigMap) },
	"v1/Secret":                     func() any { return new(corev1.Secret) },
	"v1/Service":                    func() any { return new(corev1.Service) },
	"v1/ServiceAccount":             func() any { return new(corev1.ServiceAccount) },
	"apps/v1/Deployment":            func() any { return new(appsv1.Deployment) },
	"policy/v1/PodDisruptionBudget": func() any { return new(policyv1.PodDisruptionBudget) },
	"rbac.authorization.k8s.io/v1/ClusterRole": func() any { return new(rbacv1.ClusterRole) },
	"rbac.authorization.k8s.io/v1/ClusterRoleBinding": func() any {
		return new(rbacv1.ClusterRoleBinding)
	},
	"monitoring.coreos.com/v1/ServiceMonitor": func() any { return new(monitoringv1.ServiceMonitor) },
	"monitoring.coreos.com/v1/PodMonitor":     func() any { return new(monitoringv1.PodMonitor) },
}

// object is one manifest decoded.
type object struct {
	file string // relative to deploy/, document number after a #; a kustomization's directory for what it renders
	dir  string // its directory: kubernetes/cluster-dns, kubernetes/upstream, kubernetes
	obj  any    // a pointer to a type of kinds
}

func (o object) meta() metav1.Object { return o.obj.(metav1.Object) }

// decodeManifest decodes one YAML document strictly: an unknown or repeated
// field, or a value of the wrong type, is an error. A document of comments
// only gives nil.
func decodeManifest(doc []byte) (any, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	if tm.APIVersion == "" && tm.Kind == "" {
		var v any
		if err := yaml.Unmarshal(doc, &v); err != nil || v != nil {
			return nil, errors.New("no apiVersion and kind")
		}
		return nil, nil
	}
	newObj, ok := kinds[tm.APIVersion+"/"+tm.Kind]
	if !ok {
		return nil, errors.New("unexpected apiVersion and kind: " + tm.APIVersion + " " + tm.Kind)
	}
	obj := newObj()
	return obj, yaml.UnmarshalStrict(doc, obj)
}

// loadManifests decodes every document of every YAML file under kubernetes/,
// and what every kustomization there renders (in place of its files), as
// kubectl apply -k renders it.
func loadManifests(t *testing.T) []object {
	t.Helper()
	var objs []object
	err := filepath.WalkDir("kubernetes", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if _, err := os.Stat(filepath.Join(p, "kustomization.yaml")); err == nil {
				data, err := kustomize(p)
				if err != nil {
					t.Errorf("kustomize %s: %v", p, err)
					return filepath.SkipDir
				}
				objs = append(objs, decodeDocs(t, p, data, filepath.ToSlash(p))...)
				return filepath.SkipDir
			}
			return nil
		}
		if filepath.Ext(p) != ".yaml" && filepath.Ext(p) != ".yml" {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		objs = append(objs, decodeDocs(t, p, data, filepath.ToSlash(filepath.Dir(p)))...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) == 0 {
		t.Fatal("no manifests under deploy/kubernetes")
	}
	return objs
}

// kustomize renders the kustomization in dir, as kubectl apply -k does.
func kustomize(dir string) ([]byte, error) {
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, err
	}
	return m.AsYaml()
}

// decodeDocs decodes the YAML documents of data, from file, strictly.
func decodeDocs(t *testing.T, file string, data []byte, dir string) []object {
	t.Helper()
	var objs []object
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for n := 1; ; n++ {
		doc, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Errorf("%s: %v", file, err)
			break
		}
		obj, err := decodeManifest(doc)
		if err != nil {
			t.Errorf("%s, document %d: %v", file, n, err)
			continue
		}
		if obj != nil {
			objs = append(objs, object{file: filepath.ToSlash(file) + "#" + strconv.Itoa(n), dir: dir, obj: obj})
		}
	}
	return objs
}

// visible returns the objects a manifest in dir can refer to: those beside it
// and the shared ones of kubernetes/ (the Secret with the pins).
func visible(objs []object, dir string) []object {
	var out []object
	for _, o := range objs {
		if o.dir == dir || o.dir == "kubernetes" {
			out = append(out, o)
		}
	}
	return out
}

func all[T any](objs []object) []*T {
	var out []*T
	for _, o := range objs {
		if v, ok := o.obj.(*T); ok {
			out = append(out, v)
		}
	}
	return out
}

func find[T any](objs []object, name string) *T {
	for _, o := range objs {
		if v, ok := o.obj.(*T); ok && o.meta().GetName() == name {
			return v
		}
	}
	return nil
}

func TestManifestsDecodeStrictly(t *testing.T) {
	objs := loadManifests(t)
	seen := map[string]string{}
	for _, o := range objs {
		m := o.meta()
		_, clusterWide := o.obj.(*rbacv1.ClusterRole)
		if _, ok := o.obj.(*rbacv1.ClusterRoleBinding); ok {
			clusterWide = true
		}
		if !clusterWide && m.GetNamespace() != "kube-system" {
			t.Errorf("%s: namespace %q, want kube-system", o.file, m.GetNamespace())
		}
		key := o.dir + " " + kindName(o.obj) + " " + m.GetName()
		if prev, ok := seen[key]; ok {
			t.Errorf("%s and %s define the same object", prev, o.file)
		}
		seen[key] = o.file
	}
	// The cluster's DNS never writes the ConfigMap coredns that the stock
	// pods mount: its Corefile is in coredns-dotstub, named with the hash of
	// its content.
	clusterDNS := []string{"ConfigMap coredns-dotstub-*", "Deployment coredns", "Service kube-dns", "ServiceAccount coredns",
		"ClusterRole system:coredns", "ClusterRoleBinding system:coredns", "PodDisruptionBudget coredns"}
	want := map[string][]string{
		"kubernetes":                     {"Secret dotstub-pins"},
		"kubernetes/cluster-dns":         clusterDNS,
		"kubernetes/overlays/example":    clusterDNS,
		"kubernetes/upstream":            {"ConfigMap dotstub", "Deployment dotstub", "Service dotstub", "ServiceAccount dotstub", "PodDisruptionBudget dotstub"},
		"kubernetes/prometheus-operator": {"ServiceMonitor dotstub", "PodMonitor dotstub"},
	}
	for dir, names := range want {
		for _, n := range names {
			found := false
			for key := range seen {
				ok, _ := path.Match(dir+" "+n, key)
				found = found || ok
			}
			if !found {
				t.Errorf("no %s in deploy/%s", n, dir)
			}
		}
	}
	for key := range seen {
		if strings.HasSuffix(key, " ConfigMap coredns") {
			t.Errorf("%s: the stock pods' ConfigMap, which a rollback needs as it was", key)
		}
	}

	// The decoder is as strict as it claims: these would pass a lenient one.
	for _, bad := range []string{
		"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replica: 2}\n",            // unknown field
		"apiVersion: v1\nkind: Service\nmetadata: {name: x, name: y}\n",                               // repeated field
		"apiVersion: v1\nkind: Service\nspec: {ports: [{port: fifty-three}]}\n",                       // wrong type
		"apiVersion: policy/v1beta1\nkind: PodDisruptionBudget\nmetadata: {name: x}\n",                // removed API
		"apiVersion: apps/v1\nkind: Deployment\nspec: {template: {spec: {containers: [{nme: x}]}}}\n", // deep unknown field
	} {
		if _, err := decodeManifest([]byte(bad)); err == nil {
			t.Errorf("decoded without error:\n%s", bad)
		}
	}
}

// kindName is the kind of a decoded object.
func kindName(v any) string { return reflect.TypeOf(v).Elem().Name() }

// deployment is a Deployment with what it refers to, resolved.
type deployment struct {
	*appsv1.Deployment
	dir       string
	objs      []object // what it can refer to
	container corev1.Container
	confPath  string            // the -conf argument
	corefile  string            // the Corefile there, from its ConfigMap
	confFiles map[string]string // every file beside it, from the same volume, the Corefile included
	expanded  string            // the Corefile with the files beside it that it imports inlined
}

// deployments resolves the Deployments' Corefiles through their volumes.
func deployments(t *testing.T, objs []object) []deployment {
	t.Helper()
	var out []deployment
	for _, o := range objs {
		d, ok := o.obj.(*appsv1.Deployment)
		if !ok {
			continue
		}
		dd := deployment{Deployment: d, dir: o.dir, objs: visible(objs, o.dir)}
		if n := len(d.Spec.Template.Spec.Containers); n != 1 {
			t.Fatalf("%s: %d containers, want 1", o.file, n)
		}
		dd.container = d.Spec.Template.Spec.Containers[0]
		args := dd.container.Args
		if len(args) != 2 || args[0] != "-conf" {
			t.Fatalf("%s: args %q, want -conf FILE", o.file, args)
		}
		dd.confPath = args[1]
		data, ok := dd.file(dd.confPath)
		if !ok {
			t.Fatalf("%s: no volume holds %s", o.file, dd.confPath)
		}
		dd.corefile = data
		dd.confFiles = dd.filesAt(path.Dir(dd.confPath))
		dd.expanded = expandImports(dd.corefile, path.Dir(dd.confPath), dd.confFiles)
		out = append(out, dd)
	}
	return out
}

// mountOf returns the volume mounted at the directory of p, and its mount.
func (d deployment) mountOf(p string) (corev1.Volume, corev1.VolumeMount, bool) {
	for _, m := range d.container.VolumeMounts {
		if m.MountPath != path.Dir(p) {
			continue
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name == m.Name {
				return v, m, true
			}
		}
	}
	return corev1.Volume{}, corev1.VolumeMount{}, false
}

// file returns what the container finds at p, when a ConfigMap or Secret
// volume of the Deployment puts it there.
func (d deployment) file(p string) (string, bool) {
	v, _, ok := d.mountOf(p)
	if !ok {
		return "", false
	}
	name := path.Base(p)
	switch {
	case v.ConfigMap != nil:
		cm := find[corev1.ConfigMap](d.objs, v.ConfigMap.Name)
		if cm == nil {
			return "", false
		}
		key := name
		if len(v.ConfigMap.Items) > 0 {
			key = ""
			for _, it := range v.ConfigMap.Items {
				if it.Path == name {
					key = it.Key
				}
			}
		}
		data, ok := cm.Data[key]
		return data, ok
	case v.Secret != nil:
		s := find[corev1.Secret](d.objs, v.Secret.SecretName)
		if s == nil {
			return "", false
		}
		if data, ok := s.StringData[name]; ok {
			return data, true
		}
		data, ok := s.Data[name]
		return string(data), ok
	}
	return "", false
}

// filesAt returns the files of the ConfigMap volume mounted at dir, by name.
func (d deployment) filesAt(dir string) map[string]string {
	v, _, ok := d.mountOf(path.Join(dir, "x"))
	if !ok || v.ConfigMap == nil {
		return nil
	}
	cm := find[corev1.ConfigMap](d.objs, v.ConfigMap.Name)
	if cm == nil {
		return nil
	}
	out := map[string]string{}
	for k, data := range cm.Data {
		if len(v.ConfigMap.Items) == 0 {
			out[k] = data
		}
		for _, it := range v.ConfigMap.Items {
			if it.Key == k {
				out[it.Path] = data
			}
		}
	}
	return out
}

// expandImports returns corefile with each import of a file in dir (a name,
// or a glob) replaced by the files of files that it names, as CoreDNS reads
// it; comment lines are left out. Other imports stay as they are.
func expandImports(corefile, dir string, files map[string]string) string {
	var out []string
	for _, l := range lines(corefile) {
		if len(l.tokens) == 0 {
			continue // blank, or a comment
		}
		if len(l.tokens) == 2 && l.tokens[0] == "import" && path.Dir(l.tokens[1]) == dir {
			var names []string
			for name := range files {
				if ok, _ := path.Match(path.Base(l.tokens[1]), name); ok {
					names = append(names, name)
				}
			}
			slices.Sort(names)
			for _, name := range names {
				for _, il := range lines(files[name]) {
					if len(il.tokens) > 0 {
						out = append(out, l.indent+strings.TrimRight(il.raw, " "))
					}
				}
			}
			continue
		}
		out = append(out, strings.TrimRight(l.raw, " "))
	}
	return strings.Join(out, "\n") + "\n"
}

// secretFiles returns the files of the Deployment's Secret volumes, by the
// path where the container finds them.
func (d deployment) secretFiles() map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, m := range d.container.VolumeMounts {
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			s := find[corev1.Secret](d.objs, v.Secret.SecretName)
			if s == nil {
				continue
			}
			files := map[string]string{}
			for k, data := range s.StringData {
				files[k] = data
			}
			for k, data := range s.Data {
				files[k] = string(data)
			}
			out[m.MountPath] = files
		}
	}
	return out
}

// probePort resolves a probe's port, by number or by container port name.
func (d deployment) probePort(p intstr.IntOrString) int {
	if p.Type == intstr.Int {
		return int(p.IntVal)
	}
	for _, cp := range d.container.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort)
		}
	}
	return -1
}

// hasPort reports whether the container declares port/protocol.
func (d deployment) hasPort(port int, proto corev1.Protocol) (name string, ok bool) {
	for _, cp := range d.container.Ports {
		if int(cp.ContainerPort) == port && cp.Protocol == proto {
			return cp.Name, true
		}
	}
	return "", false
}

func TestManifestsReferToEachOther(t *testing.T) {
	objs := loadManifests(t)
	ds := deployments(t, objs)
	if len(ds) != 3 {
		t.Fatalf("%d Deployments, want 3 (cluster-dns, its example overlay, upstream)", len(ds))
	}
	dockerCmd, dockerUser, dockerExpose := dockerfile(t)
	for _, d := range ds {
		t.Run(d.dir, func(t *testing.T) {
			spec := d.Spec.Template.Spec
			c := d.container
			tmpl := labels.Set(d.Spec.Template.Labels)

			sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
			if err != nil || !sel.Matches(tmpl) {
				t.Errorf("the Deployment's selector %v does not select its own pods %v", d.Spec.Selector, tmpl)
			}
			if c.Image != image {
				t.Errorf("image %q, want the placeholder %q", c.Image, image)
			}
			if !slices.Equal(c.Args, dockerCmd) {
				t.Errorf("args %q, the image's CMD %q: they should say the same", c.Args, dockerCmd)
			}

			// Every volume names an object that exists; no subPath, which
			// would keep the kubelet from updating the files.
			for _, v := range spec.Volumes {
				switch {
				case v.ConfigMap != nil:
					cm := find[corev1.ConfigMap](d.objs, v.ConfigMap.Name)
					if cm == nil {
						t.Errorf("volume %s: no ConfigMap %s", v.Name, v.ConfigMap.Name)
						continue
					}
					for _, it := range v.ConfigMap.Items {
						if _, ok := cm.Data[it.Key]; !ok {
							t.Errorf("volume %s: ConfigMap %s has no key %s", v.Name, cm.Name, it.Key)
						}
					}
				case v.Secret != nil:
					if find[corev1.Secret](d.objs, v.Secret.SecretName) == nil {
						t.Errorf("volume %s: no Secret %s", v.Name, v.Secret.SecretName)
					}
				}
			}
			for _, m := range c.VolumeMounts {
				if m.SubPath != "" || m.SubPathExpr != "" {
					t.Errorf("volume mount %s uses subPath: its files would never be updated", m.Name)
				}
			}
			if sa := find[corev1.ServiceAccount](d.objs, spec.ServiceAccountName); sa == nil {
				t.Errorf("no ServiceAccount %s", spec.ServiceAccountName)
			}

			// The Corefile's ports are the container's and the probes'.
			for _, p := range serverPorts(d.expanded) {
				for _, proto := range []corev1.Protocol{corev1.ProtocolUDP, corev1.ProtocolTCP} {
					if _, ok := d.hasPort(p, proto); !ok {
						t.Errorf("the Corefile serves port %d, the container declares no %d/%s", p, p, proto)
					}
				}
			}
			ports := listens(d.expanded)
			for _, want := range []struct {
				plugin, path string
				probe        *corev1.Probe
			}{
				{"health", "/health", c.LivenessProbe},
				{"ready", "/ready", c.ReadinessProbe},
			} {
				if want.probe == nil || want.probe.HTTPGet == nil {
					t.Errorf("no HTTP probe for %s", want.plugin)
					continue
				}
				port, ok := ports[want.plugin]
				if !ok {
					t.Errorf("the Corefile has no %s, which the probe asks", want.plugin)
				}
				if got := d.probePort(want.probe.HTTPGet.Port); got != port || want.probe.HTTPGet.Path != want.path {
					t.Errorf("%s probe asks :%d%s, the Corefile's %s listens on :%d%s", want.plugin, got, want.probe.HTTPGet.Path, want.plugin, port, want.path)
				}
			}
			metricsPort, ok := ports["prometheus"]
			if !ok {
				t.Error("the Corefile has no prometheus")
			}
			if name, ok := d.hasPort(metricsPort, corev1.ProtocolTCP); !ok || name != "metrics" {
				t.Errorf("no container port metrics at %d/TCP, where prometheus listens", metricsPort)
			}
			if !slices.Contains(dockerExpose, strconv.Itoa(metricsPort)) {
				t.Errorf("the Dockerfile does not EXPOSE %d: %v", metricsPort, dockerExpose)
			}

			// What the Corefile imports, and every file those name, is where a
			// volume puts it (the files beside the Corefile are inlined in
			// expanded; a glob may match none).
			for _, l := range lines(d.expanded) {
				if len(l.tokens) == 2 && l.tokens[0] == "import" && !strings.ContainsAny(l.tokens[1], "*?[") {
					snippet, ok := d.file(l.tokens[1])
					if !ok {
						t.Errorf("the Corefile imports %s, which no volume provides", l.tokens[1])
					}
					for _, sl := range lines(snippet) {
						for _, tok := range sl.tokens {
							if strings.HasPrefix(tok, "/") {
								if _, ok := d.file(tok); !ok {
									t.Errorf("%s names %s, which no volume provides", l.tokens[1], tok)
								}
							}
						}
					}
				}
			}
			if strings.Contains(d.corefile, "import ") && d.confFiles == nil {
				t.Error("the Corefile imports files, and no volume puts any beside it")
			}

			// The Services and the PodDisruptionBudget select these pods and
			// reach ports the container declares.
			services := all[corev1.Service](d.objs)
			if len(services) == 0 {
				t.Error("no Service")
			}
			for _, s := range services {
				if !labels.SelectorFromSet(s.Spec.Selector).Matches(tmpl) || len(s.Spec.Selector) == 0 {
					t.Errorf("Service %s selects %v, not these pods %v", s.Name, s.Spec.Selector, tmpl)
				}
				if s.Spec.ClusterIP != "" {
					t.Errorf("Service %s sets clusterIP: leave it to the cluster (see service.yaml)", s.Name)
				}
				for _, sp := range s.Spec.Ports {
					port := sp.TargetPort
					if port.Type == intstr.Int && port.IntVal == 0 {
						port = intstr.FromInt32(sp.Port)
					}
					target := d.probePort(port)
					if _, ok := d.hasPort(target, sp.Protocol); !ok {
						t.Errorf("Service %s port %s reaches %s/%s, which the container does not declare", s.Name, sp.Name, port.String(), sp.Protocol)
					}
				}
			}
			for _, pdb := range all[policyv1.PodDisruptionBudget](d.objs) {
				sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
				if err != nil || !sel.Matches(tmpl) {
					t.Errorf("PodDisruptionBudget %s does not select these pods", pdb.Name)
				}
			}

			// The kubernetes plugin may list and watch what it reads.
			if strings.Contains(d.expanded, "kubernetes ") {
				for _, want := range []struct{ group, resource string }{
					{"", "endpoints"}, {"", "services"}, {"", "pods"}, {"", "namespaces"}, {"discovery.k8s.io", "endpointslices"},
				} {
					for _, verb := range []string{"list", "watch"} {
						if !allowed(d.objs, d.Namespace, spec.ServiceAccountName, want.group, want.resource, verb) {
							t.Errorf("ServiceAccount %s may not %s %s", spec.ServiceAccountName, verb, want.resource)
						}
					}
				}
				if spec.AutomountServiceAccountToken != nil && !*spec.AutomountServiceAccountToken {
					t.Error("the kubernetes plugin needs the service account token")
				}
			}

			// The cluster's DNS does not resolve through itself; it runs as
			// no one, with one capability, and asks for resources.
			if spec.DNSPolicy != corev1.DNSDefault {
				t.Errorf("dnsPolicy %q, want Default", spec.DNSPolicy)
			}
			psc, sc := spec.SecurityContext, c.SecurityContext
			if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || strconv.FormatInt(*psc.RunAsUser, 10)+":"+strconv.FormatInt(*psc.RunAsGroup, 10) != dockerUser {
				t.Errorf("pod securityContext %+v: want runAsNonRoot and the image's USER %s", psc, dockerUser)
			}
			if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
				sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.Capabilities == nil ||
				!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_BIND_SERVICE"}) {
				t.Errorf("container securityContext %s: want no privilege escalation, a read-only root, capabilities drop ALL add NET_BIND_SERVICE", jsonOf(sc))
			}
			r := c.Resources
			if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() || r.Limits.Memory().IsZero() {
				t.Errorf("resources %s: want cpu and memory requests and a memory limit", jsonOf(r))
			}
			// The garbage collector's soft limit follows the memory limit.
			limit, soft := r.Limits.Memory().Value(), int64(0)
			for _, e := range c.Env {
				if e.Name == "GOMEMLIMIT" {
					soft = goMemLimit(t, e.Value)
				}
			}
			if soft < limit*8/10 || soft > limit*95/100 {
				t.Errorf("GOMEMLIMIT %d bytes with limits.memory %d: want 80 to 95%% of it", soft, limit)
			}
		})
	}
}

// goMemLimit returns the bytes of a GOMEMLIMIT value, as the Go runtime
// reads it: a number of bytes with an optional unit B, KiB, MiB, GiB or TiB.
func goMemLimit(t *testing.T, v string) int64 {
	t.Helper()
	for i, unit := range []string{"TiB", "GiB", "MiB", "KiB", "B", ""} {
		if n, ok := strings.CutSuffix(v, unit); ok {
			b, err := strconv.ParseInt(n, 10, 64)
			if err != nil {
				t.Fatalf("GOMEMLIMIT %q: %v", v, err)
			}
			if i < 4 {
				b <<= 10 * (4 - i)
			}
			return b
		}
	}
	return 0
}

// allowed reports whether the ServiceAccount ns/sa may verb resource of group
// through a ClusterRoleBinding among objs.
func allowed(objs []object, ns, sa, group, resource, verb string) bool {
	for _, b := range all[rbacv1.ClusterRoleBinding](objs) {
		bound := false
		for _, s := range b.Subjects {
			bound = bound || s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == ns
		}
		role := find[rbacv1.ClusterRole](objs, b.RoleRef.Name)
		if !bound || b.RoleRef.Kind != "ClusterRole" || role == nil {
			continue
		}
		for _, r := range role.Rules {
			if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
				return true
			}
		}
	}
	return false
}

// dockerfile returns the final stage's CMD, USER and EXPOSEd ports (numbers,
// and number/protocol) of the repository's Dockerfile.
func dockerfile(t *testing.T) (cmd []string, user string, expose []string) {
	t.Helper()
	data, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		word, rest, _ := strings.Cut(strings.TrimSpace(l), " ")
		switch word {
		case "FROM":
			cmd, user, expose = nil, "", nil // a new stage
		case "CMD":
			if err := json.Unmarshal([]byte(rest), &cmd); err != nil {
				t.Fatalf("Dockerfile: CMD %s: %v", rest, err)
			}
		case "USER":
			user = strings.TrimSpace(rest)
		case "EXPOSE":
			for _, p := range strings.Fields(rest) {
				expose = append(expose, p, strings.Split(p, "/")[0])
			}
		}
	}
	return cmd, user, expose
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestPrometheusOperatorSelects: the ServiceMonitor selects the DNS Services
// of both layouts and scrapes a port they have; the PodMonitor selects the
// pods of every Deployment and scrapes a port their container declares.
func TestPrometheusOperatorSelects(t *testing.T) {
	objs := loadManifests(t)
	sms, pms := all[monitoringv1.ServiceMonitor](objs), all[monitoringv1.PodMonitor](objs)
	if len(sms) != 1 || len(pms) != 1 {
		t.Fatalf("%d ServiceMonitors and %d PodMonitors, want one each", len(sms), len(pms))
	}
	sm, pm := sms[0], pms[0]
	if !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{"kube-system"}) || !slices.Equal(pm.Spec.NamespaceSelector.MatchNames, []string{"kube-system"}) {
		t.Errorf("namespace selectors %v and %v, want kube-system", sm.Spec.NamespaceSelector, pm.Spec.NamespaceSelector)
	}
	smSel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	pmSel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kube-dns", "dotstub"} {
		svc := find[corev1.Service](objs, want)
		if svc == nil {
			t.Fatalf("no Service %s", want)
		}
		if !smSel.Matches(labels.Set(svc.Labels)) {
			t.Errorf("the ServiceMonitor does not select the Service %s (labels %v)", want, svc.Labels)
		}
		for _, ep := range sm.Spec.Endpoints {
			if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == ep.Port }) {
				t.Errorf("the ServiceMonitor scrapes port %q, which the Service %s does not have", ep.Port, want)
			}
		}
	}
	for _, d := range deployments(t, objs) {
		if !pmSel.Matches(labels.Set(d.Spec.Template.Labels)) {
			t.Errorf("the PodMonitor does not select the pods of %s/%s (labels %v)", d.dir, d.Name, d.Spec.Template.Labels)
		}
		for _, ep := range pm.Spec.PodMetricsEndpoints {
			if ep.Port == nil {
				t.Errorf("a PodMonitor endpoint without a port name")
			} else if !slices.ContainsFunc(d.container.Ports, func(p corev1.ContainerPort) bool { return p.Name == *ep.Port }) {
				t.Errorf("the PodMonitor scrapes port %q, which the container of %s/%s does not declare", *ep.Port, d.dir, d.Name)
			}
		}
	}
}
