package deploy

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// kubernetesIP is the address of the one Service the fake API holds,
// default/kubernetes, as a cluster names its API server.
const kubernetesIP = "10.96.0.1"

// apiServer stands in for the Kubernetes API server, over plain HTTP on
// loopback, so that the kubernetes plugin of a Corefile runs as written: it
// lists and watches what the plugin reads (services, endpointslices,
// namespaces, pods), and answers a watch that asks for its initial events
// (client-go's WatchList) with them and the bookmark that ends them. The only
// object is the Service default/kubernetes, so a test can resolve a cluster
// name. The plugin gets its address through an `endpoint` line the stage adds
// to its block, which takes the place of the in-cluster configuration.
type apiServer struct {
	*httptest.Server
	quit chan struct{} // closed to end the watches, which otherwise never end

	mu      sync.Mutex // guards unknown
	unknown []string   // requests for anything else
}

func startAPIServer(t *testing.T) *apiServer {
	t.Helper()
	a := &apiServer{quit: make(chan struct{})}
	a.Server = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(func() {
		close(a.quit)
		a.Close()
	})
	return a
}

// Unknown returns the requests the fake API could not answer.
func (a *apiServer) Unknown() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.unknown...)
}

func (a *apiServer) serve(w http.ResponseWriter, r *http.Request) {
	list, items := a.collection(r.URL.Path)
	if list == nil {
		a.mu.Lock()
		a.unknown = append(a.unknown, r.Method+" "+r.URL.String())
		a.mu.Unlock()
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if r.URL.Query().Get("watch") != "true" {
		json.NewEncoder(w).Encode(list)
		return
	}
	enc := json.NewEncoder(w)
	if r.URL.Query().Get("sendInitialEvents") == "true" {
		for _, it := range items {
			enc.Encode(watchEvent{"ADDED", it})
		}
		var tm metav1.TypeMeta
		b, _ := json.Marshal(list)
		json.Unmarshal(b, &tm)
		enc.Encode(watchEvent{"BOOKMARK", map[string]any{
			"kind": strings.TrimSuffix(tm.Kind, "List"), "apiVersion": tm.APIVersion,
			"metadata": map[string]any{"resourceVersion": "1", "annotations": map[string]string{metav1.InitialEventsAnnotationKey: "true"}},
		}})
	}
	w.(http.Flusher).Flush()
	select { // nothing ever changes
	case <-r.Context().Done():
	case <-a.quit:
	}
}

// collection returns the list at path, and its items each with its kind.
func (a *apiServer) collection(path string) (list any, items []any) {
	lm := metav1.ListMeta{ResourceVersion: "1"}
	switch path {
	case "/api/v1/services":
		svc := corev1.Service{
			TypeMeta:   metav1.TypeMeta{Kind: "Service", APIVersion: "v1"},
			ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default", ResourceVersion: "1"},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: kubernetesIP, ClusterIPs: []string{kubernetesIP},
				Ports: []corev1.ServicePort{{Name: "https", Port: 443, Protocol: corev1.ProtocolTCP}}},
		}
		return &corev1.ServiceList{TypeMeta: metav1.TypeMeta{Kind: "ServiceList", APIVersion: "v1"}, ListMeta: lm,
			Items: []corev1.Service{svc}}, []any{svc}
	case "/api/v1/namespaces":
		var nss []corev1.Namespace
		for _, n := range []string{"default", "kube-system"} {
			nss = append(nss, corev1.Namespace{TypeMeta: metav1.TypeMeta{Kind: "Namespace", APIVersion: "v1"},
				ObjectMeta: metav1.ObjectMeta{Name: n, ResourceVersion: "1"}})
		}
		items := make([]any, len(nss))
		for i := range nss {
			items[i] = nss[i]
		}
		return &corev1.NamespaceList{TypeMeta: metav1.TypeMeta{Kind: "NamespaceList", APIVersion: "v1"}, ListMeta: lm, Items: nss}, items
	case "/api/v1/pods":
		return &corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}, ListMeta: lm}, nil
	case "/api/v1/endpoints":
		return &corev1.EndpointsList{TypeMeta: metav1.TypeMeta{Kind: "EndpointsList", APIVersion: "v1"}, ListMeta: lm}, nil
	case "/apis/discovery.k8s.io/v1/endpointslices":
		return &discoveryv1.EndpointSliceList{TypeMeta: metav1.TypeMeta{Kind: "EndpointSliceList", APIVersion: "discovery.k8s.io/v1"}, ListMeta: lm}, nil
	}
	return nil, nil
}

// watchEvent is a line of a watch stream.
type watchEvent struct {
	Type   string `json:"type"`
	Object any    `json:"object"`
}
