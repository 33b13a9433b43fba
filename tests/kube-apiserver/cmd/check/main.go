// Command check drives a running kube-apiserver (whose storage is netsy) through the API paths
// Kubernetes leans on etcd for, and reads netsy directly to confirm what the apiserver stored.
// Every assertion prints a PASS or FAIL line; the exit status is 1 when any failed.
// run.sh (beside this directory) starts netsy and the apiserver and calls this.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const ns = "netsy-e2e"

var (
	passed, failed int
	stepTimeout    = 30 * time.Second
)

// check records one assertion.
func check(name string, err error) bool {
	if err != nil {
		failed++
		fmt.Printf("FAIL %s: %v\n", name, err)
		return false
	}
	passed++
	fmt.Printf("PASS %s\n", name)
	return true
}

func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), stepTimeout)
}

// poll calls f until it returns nil or the deadline passes; it returns f's last error.
func poll(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(250 * time.Millisecond) // polling interval; the loop checks the condition
	}
}

func rvOf(s string) int64 {
	v, _ := strconv.ParseInt(s, 10, 64)
	return v
}

type env struct {
	kube *kubernetes.Clientset
	dyn  *dynamic.DynamicClient
	ext  *apiextclient.Clientset
	etcd *clientv3.Client
}

func main() {
	server := flag.String("server", "", "apiserver URL")
	caFile := flag.String("ca", "", "CA bundle of the apiserver's serving certificate")
	tokenFile := flag.String("token-file", "", "file holding a bearer token")
	etcdEP := flag.String("etcd", "", "netsy client endpoint (host:port)")
	compactWait := flag.Duration("compaction-deadline", 3*time.Minute, "how long to wait for the apiserver's compactor")
	flag.Parse()

	token, err := os.ReadFile(*tokenFile)
	if err != nil {
		fmt.Println("FAIL setup: read token:", err)
		os.Exit(1)
	}
	cfg := &rest.Config{Host: *server, BearerToken: strings.TrimSpace(string(token)),
		TLSClientConfig: rest.TLSClientConfig{CAFile: *caFile}}
	// No rest.Config.Timeout: it would cut long-running watches; every call has a context deadline.
	e := env{}
	e.kube = kubernetes.NewForConfigOrDie(cfg)
	e.dyn = dynamic.NewForConfigOrDie(cfg)
	e.ext = apiextclient.NewForConfigOrDie(cfg)
	e.etcd, err = clientv3.New(clientv3.Config{Endpoints: []string{*etcdEP}, DialTimeout: 5 * time.Second,
		Logger: zap.NewNop()}) // expected errors (compacted reads) would otherwise be logged as warnings
	if err != nil {
		fmt.Println("FAIL setup: etcd client:", err)
		os.Exit(1)
	}
	defer e.etcd.Close()

	startRev := e.bootstrap()
	nsWatch := e.watchNamespaces()
	e.namespace()
	e.configMaps()
	e.secrets()
	e.watch()
	e.watchList()
	oldCont, oldRV := e.pagination()
	e.consistentRead()
	e.crd()
	e.eventLease()
	e.compaction(startRev, oldCont, oldRV, *compactWait)
	e.deleteNamespace(nsWatch)

	fmt.Printf("check: %d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}

// bootstrap: the objects the apiserver's own controllers write at start-up are in netsy.
func (e env) bootstrap() int64 {
	for _, n := range []string{"default", "kube-system", "kube-public"} {
		check("bootstrap namespace "+n+" exists", poll(60*time.Second, func() error {
			c, cancel := ctx()
			defer cancel()
			_, err := e.kube.CoreV1().Namespaces().Get(c, n, metav1.GetOptions{})
			return err
		}))
	}
	check("bootstrap service default/kubernetes exists", poll(60*time.Second, func() error {
		c, cancel := ctx()
		defer cancel()
		_, err := e.kube.CoreV1().Services("default").Get(c, "kubernetes", metav1.GetOptions{})
		return err
	}))
	c, cancel := ctx()
	defer cancel()
	resp, err := e.etcd.Get(c, "/registry/namespaces/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if check("netsy holds /registry/namespaces/ keys", func() error {
		if err != nil {
			return err
		}
		if len(resp.Kvs) < 3 {
			return fmt.Errorf("want >= 3 namespace keys, got %d", len(resp.Kvs))
		}
		return nil
	}()) {
		return resp.Header.Revision
	}
	return 0
}

type collected struct {
	events <-chan watch.Event
	stop   func()
}

func (e env) watchNamespaces() collected {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	list, err := e.kube.CoreV1().Namespaces().List(c, metav1.ListOptions{})
	if !check("list namespaces", err) {
		cancel()
		return collected{stop: func() {}}
	}
	w, err := e.kube.CoreV1().Namespaces().Watch(c, metav1.ListOptions{ResourceVersion: list.ResourceVersion,
		FieldSelector: "metadata.name=" + ns})
	if !check("watch namespaces from the list's resourceVersion", err) {
		cancel()
		return collected{stop: func() {}}
	}
	return collected{events: w.ResultChan(), stop: func() { w.Stop(); cancel() }}
}

func (e env) namespace() {
	c, cancel := ctx()
	defer cancel()
	_, err := e.kube.CoreV1().Namespaces().Create(c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	check("create namespace "+ns, err)
	_, err = e.kube.CoreV1().Namespaces().Create(c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	check("create it again: AlreadyExists", want(apierrors.IsAlreadyExists, err))
	got, err := e.kube.CoreV1().Namespaces().Get(c, ns, metav1.GetOptions{})
	if check("get namespace", err) {
		got.Labels = map[string]string{"netsy": "yes"}
		upd, err := e.kube.CoreV1().Namespaces().Update(c, got, metav1.UpdateOptions{})
		check("update namespace labels (resourceVersion moves forward)", func() error {
			if err != nil {
				return err
			}
			if rvOf(upd.ResourceVersion) <= rvOf(got.ResourceVersion) {
				return fmt.Errorf("resourceVersion %s -> %s", got.ResourceVersion, upd.ResourceVersion)
			}
			return nil
		}())
	}
	list, err := e.kube.CoreV1().Namespaces().List(c, metav1.ListOptions{LabelSelector: "netsy=yes"})
	check("list namespaces by label", func() error {
		if err != nil {
			return err
		}
		if len(list.Items) != 1 || list.Items[0].Name != ns {
			return fmt.Errorf("got %d items", len(list.Items))
		}
		return nil
	}())
}

func want(pred func(error) bool, err error) error {
	if err == nil {
		return errors.New("succeeded, want an error")
	}
	if !pred(err) {
		return fmt.Errorf("wrong error: %v", err)
	}
	return nil
}

func (e env) configMaps() {
	c, cancel := ctx()
	defer cancel()
	cms := e.kube.CoreV1().ConfigMaps(ns)
	cm, err := cms.Create(c, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm-a"}, Data: map[string]string{"k": "v1"}}, metav1.CreateOptions{})
	if !check("create configmap", err) {
		return
	}
	got, err := cms.Get(c, "cm-a", metav1.GetOptions{})
	check("get configmap returns what was written", func() error {
		if err != nil {
			return err
		}
		if got.Data["k"] != "v1" || got.ResourceVersion != cm.ResourceVersion {
			return fmt.Errorf("data %v rv %s (created rv %s)", got.Data, got.ResourceVersion, cm.ResourceVersion)
		}
		return nil
	}())
	got.Data["k"] = "v2"
	upd, err := cms.Update(c, got, metav1.UpdateOptions{})
	check("update configmap", func() error {
		if err != nil {
			return err
		}
		if rvOf(upd.ResourceVersion) <= rvOf(cm.ResourceVersion) {
			return fmt.Errorf("resourceVersion did not move: %s -> %s", cm.ResourceVersion, upd.ResourceVersion)
		}
		return nil
	}())
	stale := got.DeepCopy()
	stale.ResourceVersion = cm.ResourceVersion
	stale.Data["k"] = "lost"
	_, err = cms.Update(c, stale, metav1.UpdateOptions{})
	check("update with a stale resourceVersion: Conflict", want(apierrors.IsConflict, err))
	p, err := cms.Patch(c, "cm-a", types.MergePatchType, []byte(`{"data":{"k2":"p"}}`), metav1.PatchOptions{})
	check("merge-patch configmap", func() error {
		if err != nil {
			return err
		}
		if p.Data["k"] != "v2" || p.Data["k2"] != "p" {
			return fmt.Errorf("data after patch: %v", p.Data)
		}
		return nil
	}())
	kv, err := e.etcd.Get(c, "/registry/configmaps/"+ns+"/cm-a")
	check("netsy holds /registry/configmaps/"+ns+"/cm-a at the object's resourceVersion", func() error {
		if err != nil {
			return err
		}
		if len(kv.Kvs) != 1 {
			return fmt.Errorf("%d keys", len(kv.Kvs))
		}
		if strconv.FormatInt(kv.Kvs[0].ModRevision, 10) != p.ResourceVersion {
			return fmt.Errorf("mod_revision %d, resourceVersion %s", kv.Kvs[0].ModRevision, p.ResourceVersion)
		}
		return nil
	}())
	check("delete configmap", cms.Delete(c, "cm-a", metav1.DeleteOptions{}))
	_, err = cms.Get(c, "cm-a", metav1.GetOptions{})
	check("get deleted configmap: NotFound", want(apierrors.IsNotFound, err))
	check("delete it again: NotFound", want(apierrors.IsNotFound, cms.Delete(c, "cm-a", metav1.DeleteOptions{})))
}

func (e env) secrets() {
	c, cancel := ctx()
	defer cancel()
	s := e.kube.CoreV1().Secrets(ns)
	_, err := s.Create(c, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s-a"}, Data: map[string][]byte{"password": []byte("hunter2")}}, metav1.CreateOptions{})
	check("create secret", err)
	got, err := s.Get(c, "s-a", metav1.GetOptions{})
	check("get secret returns its data", func() error {
		if err != nil {
			return err
		}
		if string(got.Data["password"]) != "hunter2" {
			return errors.New("data differs")
		}
		return nil
	}())
	kv, err := e.etcd.Get(c, "/registry/secrets/"+ns+"/s-a")
	check("netsy holds the secret as a protobuf object (k8s\\x00 prefix)", func() error {
		if err != nil {
			return err
		}
		if len(kv.Kvs) != 1 || !strings.HasPrefix(string(kv.Kvs[0].Value), "k8s\x00") {
			return fmt.Errorf("%d keys or not protobuf", len(kv.Kvs))
		}
		return nil
	}())
	check("delete secret", s.Delete(c, "s-a", metav1.DeleteOptions{}))
	kv, err = e.etcd.Get(c, "/registry/secrets/"+ns+"/s-a")
	check("the secret's key is gone from netsy", func() error {
		if err != nil {
			return err
		}
		if len(kv.Kvs) != 0 {
			return errors.New("key still present")
		}
		return nil
	}())
}

// expect reads events from ch until each wanted (type, name) has arrived in order, or the deadline.
func expect(ch <-chan watch.Event, want [][2]string, timeout time.Duration) error {
	deadline := time.After(timeout)
	var seen []string
	for i := 0; i < len(want); {
		select {
		case ev, ok := <-ch:
			if !ok {
				return fmt.Errorf("watch closed after %v", seen)
			}
			if ev.Type == watch.Error {
				return fmt.Errorf("watch error: %v", apierrors.FromObject(ev.Object))
			}
			m, err := metaOf(ev.Object)
			if err != nil {
				return err
			}
			seen = append(seen, string(ev.Type)+" "+m.GetName())
			if string(ev.Type) == want[i][0] && m.GetName() == want[i][1] {
				i++
			} else if ev.Type != watch.Bookmark {
				return fmt.Errorf("got %s %s, want %s %s (seen %v)", ev.Type, m.GetName(), want[i][0], want[i][1], seen)
			}
		case <-deadline:
			return fmt.Errorf("timed out after %v; seen %v, want %v", timeout, seen, want)
		}
	}
	return nil
}

func metaOf(o any) (metav1.Object, error) {
	m, ok := o.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("event object %T has no metadata", o)
	}
	return m, nil
}

func (e env) watch() {
	c, cancel := ctx()
	defer cancel()
	cms := e.kube.CoreV1().ConfigMaps(ns)
	list, err := cms.List(c, metav1.ListOptions{})
	if !check("list configmaps (start of watch)", err) {
		return
	}
	w, err := cms.Watch(c, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	if !check("watch configmaps from the list's resourceVersion", err) {
		return
	}
	defer w.Stop()
	cm, err := cms.Create(c, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm-w"}, Data: map[string]string{"a": "1"}}, metav1.CreateOptions{})
	if check("create cm-w", err) {
		cm.Data["a"] = "2"
		_, err = cms.Update(c, cm, metav1.UpdateOptions{})
		check("update cm-w", err)
		check("delete cm-w", cms.Delete(c, "cm-w", metav1.DeleteOptions{}))
	}
	check("watch sees ADDED, MODIFIED, DELETED of cm-w in order",
		expect(w.ResultChan(), [][2]string{{"ADDED", "cm-w"}, {"MODIFIED", "cm-w"}, {"DELETED", "cm-w"}}, 20*time.Second))

	// A watch from an older resourceVersion replays history (from the watch cache or netsy).
	w2, err := cms.Watch(c, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	if check("second watch from the same resourceVersion", err) {
		check("it replays the same three events", expect(w2.ResultChan(),
			[][2]string{{"ADDED", "cm-w"}, {"MODIFIED", "cm-w"}, {"DELETED", "cm-w"}}, 20*time.Second))
		w2.Stop()
	}
}

// watchList: the WatchList feature (sendInitialEvents) streams the current state, then a bookmark.
func (e env) watchList() {
	c, cancel := ctx()
	defer cancel()
	cms := e.kube.CoreV1().ConfigMaps(ns)
	var names []string
	for i := 0; i < 3; i++ {
		n := fmt.Sprintf("wl-%d", i)
		_, err := cms.Create(c, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{"set": "wl"}}}, metav1.CreateOptions{})
		if !check("create "+n, err) {
			return
		}
		names = append(names, n)
	}
	yes := true
	w, err := cms.Watch(c, metav1.ListOptions{LabelSelector: "set=wl", SendInitialEvents: &yes,
		ResourceVersionMatch: metav1.ResourceVersionMatchNotOlderThan, AllowWatchBookmarks: true})
	if !check("watch with sendInitialEvents=true (WatchList)", err) {
		return
	}
	defer w.Stop()
	check("WatchList streams the 3 objects, then the initial-events-end bookmark", func() error {
		var got []string
		deadline := time.After(20 * time.Second)
		for {
			select {
			case ev, ok := <-w.ResultChan():
				if !ok {
					return fmt.Errorf("closed after %v", got)
				}
				m, err := metaOf(ev.Object)
				if err != nil {
					return err
				}
				switch ev.Type {
				case watch.Added:
					got = append(got, m.GetName())
				case watch.Bookmark:
					if m.GetAnnotations()[metav1.InitialEventsAnnotationKey] != "true" {
						continue
					}
					sort.Strings(got)
					if strings.Join(got, ",") != strings.Join(names, ",") {
						return fmt.Errorf("initial events %v, want %v", got, names)
					}
					return nil
				default:
					return fmt.Errorf("unexpected %s %s", ev.Type, m.GetName())
				}
			case <-deadline:
				return fmt.Errorf("no initial-events-end bookmark; got %v", got)
			}
		}
	}())
}

// pagination: limit/continue pages are served from one snapshot (netsy Range at a revision).
// Returns a continue token and a resourceVersion from early on, for the compaction checks.
func (e env) pagination() (string, string) {
	c, cancel := ctx()
	defer cancel()
	cms := e.kube.CoreV1().ConfigMaps(ns)
	for i := 0; i < 25; i++ {
		_, err := cms.Create(c, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("page-%02d", i), Labels: map[string]string{"set": "page"}}}, metav1.CreateOptions{})
		if err != nil {
			check("create 25 configmaps", err)
			return "", ""
		}
	}
	check("create 25 configmaps", nil)
	first, err := cms.List(c, metav1.ListOptions{LabelSelector: "set=page", Limit: 10})
	if !check("list limit=10: 10 items and a continue token", func() error {
		if err != nil {
			return err
		}
		if len(first.Items) != 10 || first.Continue == "" {
			return fmt.Errorf("%d items, continue %q", len(first.Items), first.Continue)
		}
		return nil
	}()) {
		return "", ""
	}
	// A write between pages must not show up in later pages (they are read at the first page's revision).
	_, err = cms.Create(c, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "page-99", Labels: map[string]string{"set": "page"}}}, metav1.CreateOptions{})
	check("create page-99 between pages", err)
	seen := map[string]bool{}
	for _, it := range first.Items {
		seen[it.Name] = true
	}
	sizes := []int{len(first.Items)}
	cont := first.Continue
	for cont != "" && len(sizes) < 10 {
		page, err := cms.List(c, metav1.ListOptions{LabelSelector: "set=page", Limit: 10, Continue: cont})
		if err != nil {
			check("list with continue", err)
			return first.Continue, first.ResourceVersion
		}
		if page.ResourceVersion != first.ResourceVersion {
			check("continued pages keep the first page's resourceVersion",
				fmt.Errorf("%s != %s", page.ResourceVersion, first.ResourceVersion))
		}
		for _, it := range page.Items {
			seen[it.Name] = true
		}
		sizes = append(sizes, len(page.Items))
		cont = page.Continue
	}
	check("pages of 10, 10, 5 hold the 25 objects of the snapshot, not page-99", func() error {
		if fmt.Sprint(sizes) != "[10 10 5]" || len(seen) != 25 || seen["page-99"] {
			return fmt.Errorf("page sizes %v, %d distinct, page-99 %v", sizes, len(seen), seen["page-99"])
		}
		return nil
	}())
	all, err := cms.List(c, metav1.ListOptions{LabelSelector: "set=page"})
	check("a fresh list sees 26", func() error {
		if err != nil {
			return err
		}
		if len(all.Items) != 26 {
			return fmt.Errorf("%d items", len(all.Items))
		}
		return nil
	}())
	old, err := cms.List(c, metav1.ListOptions{LabelSelector: "set=page", ResourceVersion: first.ResourceVersion,
		ResourceVersionMatch: metav1.ResourceVersionMatchExact})
	check("list at an exact older resourceVersion sees 25", func() error {
		if err != nil {
			return err
		}
		if len(old.Items) != 25 {
			return fmt.Errorf("%d items", len(old.Items))
		}
		return nil
	}())
	return first.Continue, first.ResourceVersion
}

// consistentRead: a list with resourceVersion="" sees a write made just before (read your writes).
func (e env) consistentRead() {
	c, cancel := ctx()
	defer cancel()
	cms := e.kube.CoreV1().ConfigMaps(ns)
	for i := 0; i < 5; i++ {
		n := fmt.Sprintf("ryw-%d", i)
		cm, err := cms.Create(c, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{"set": "ryw"}}}, metav1.CreateOptions{})
		if err != nil {
			check("create "+n, err)
			return
		}
		list, err := cms.List(c, metav1.ListOptions{LabelSelector: "set=ryw"})
		if err == nil && (len(list.Items) != i+1 || rvOf(list.ResourceVersion) < rvOf(cm.ResourceVersion)) {
			err = fmt.Errorf("after creating %s (rv %s): %d items at rv %s", n, cm.ResourceVersion, len(list.Items), list.ResourceVersion)
		}
		if err != nil {
			check("consistent list sees each write at once", err)
			return
		}
	}
	check("consistent list sees each write at once (5 rounds)", nil)
	list, err := cms.List(c, metav1.ListOptions{LabelSelector: "set=ryw", ResourceVersion: "0"})
	check("list with resourceVersion=0 (any cached state) answers", err)
	_ = list
}

var widgetGVR = schema.GroupVersionResource{Group: "e2e.netsy.dev", Version: "v1", Resource: "widgets"}

func (e env) crd() {
	c, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	crd := &apiextv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: "widgets.e2e.netsy.dev"},
		Spec: apiextv1.CustomResourceDefinitionSpec{
			Group: "e2e.netsy.dev",
			Names: apiextv1.CustomResourceDefinitionNames{Plural: "widgets", Singular: "widget", Kind: "Widget", ListKind: "WidgetList"},
			Scope: apiextv1.NamespaceScoped,
			Versions: []apiextv1.CustomResourceDefinitionVersion{{
				Name: "v1", Served: true, Storage: true,
				Subresources: &apiextv1.CustomResourceSubresources{Status: &apiextv1.CustomResourceSubresourceStatus{}},
				Schema: &apiextv1.CustomResourceValidation{OpenAPIV3Schema: &apiextv1.JSONSchemaProps{
					Type: "object",
					Properties: map[string]apiextv1.JSONSchemaProps{
						"spec":   {Type: "object", Properties: map[string]apiextv1.JSONSchemaProps{"size": {Type: "integer", Minimum: ptr(0.0)}}},
						"status": {Type: "object", Properties: map[string]apiextv1.JSONSchemaProps{"ready": {Type: "boolean"}}},
					},
				}},
			}},
		},
	}
	_, err := e.ext.ApiextensionsV1().CustomResourceDefinitions().Create(c, crd, metav1.CreateOptions{})
	if !check("create CRD widgets.e2e.netsy.dev", err) {
		return
	}
	check("CRD becomes Established", poll(60*time.Second, func() error {
		got, err := e.ext.ApiextensionsV1().CustomResourceDefinitions().Get(c, crd.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range got.Status.Conditions {
			if cond.Type == apiextv1.Established && cond.Status == apiextv1.ConditionTrue {
				return nil
			}
		}
		return errors.New("not established")
	}))
	wr := e.dyn.Resource(widgetGVR).Namespace(ns)
	var list *unstructured.UnstructuredList
	check("list widgets (empty) once the resource is served", poll(60*time.Second, func() error {
		var err error
		list, err = wr.List(c, metav1.ListOptions{})
		return err
	}))
	if list == nil {
		return
	}
	w, err := wr.Watch(c, metav1.ListOptions{ResourceVersion: list.GetResourceVersion()})
	if !check("watch widgets", err) {
		return
	}
	defer w.Stop()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "e2e.netsy.dev/v1", "kind": "Widget",
		"metadata": map[string]any{"name": "w1"},
		"spec":     map[string]any{"size": int64(3)},
	}}
	created, err := wr.Create(c, obj, metav1.CreateOptions{})
	if !check("create custom resource w1", err) {
		return
	}
	bad := obj.DeepCopy()
	bad.SetName("w-bad")
	_ = unstructured.SetNestedField(bad.Object, int64(-1), "spec", "size")
	_, err = wr.Create(c, bad, metav1.CreateOptions{})
	check("schema validation rejects spec.size=-1: Invalid", want(apierrors.IsInvalid, err))
	_ = unstructured.SetNestedField(created.Object, int64(5), "spec", "size")
	upd, err := wr.Update(c, created, metav1.UpdateOptions{})
	check("update w1 spec", err)
	if upd != nil {
		_ = unstructured.SetNestedField(upd.Object, true, "status", "ready")
		st, err := wr.UpdateStatus(c, upd, metav1.UpdateOptions{})
		check("update w1 status subresource", func() error {
			if err != nil {
				return err
			}
			if r, _, _ := unstructured.NestedBool(st.Object, "status", "ready"); !r {
				return errors.New("status.ready not set")
			}
			return nil
		}())
	}
	got, err := wr.Get(c, "w1", metav1.GetOptions{})
	check("get w1 returns spec.size=5, status.ready=true", func() error {
		if err != nil {
			return err
		}
		size, _, _ := unstructured.NestedInt64(got.Object, "spec", "size")
		ready, _, _ := unstructured.NestedBool(got.Object, "status", "ready")
		if size != 5 || !ready {
			return fmt.Errorf("size %d ready %v", size, ready)
		}
		return nil
	}())
	kv, err := e.etcd.Get(c, "/registry/e2e.netsy.dev/widgets/"+ns+"/w1")
	check("netsy holds /registry/e2e.netsy.dev/widgets/"+ns+"/w1", func() error {
		if err != nil {
			return err
		}
		if len(kv.Kvs) != 1 {
			return fmt.Errorf("%d keys", len(kv.Kvs))
		}
		return nil
	}())
	check("delete w1", wr.Delete(c, "w1", metav1.DeleteOptions{}))
	check("widget watch sees ADDED, MODIFIED (spec), MODIFIED (status), DELETED", expect(w.ResultChan(),
		[][2]string{{"ADDED", "w1"}, {"MODIFIED", "w1"}, {"MODIFIED", "w1"}, {"DELETED", "w1"}}, 20*time.Second))
}

func ptr[T any](v T) *T { return &v }

// eventLease: Events are stored with a TTL, i.e. attached to an etcd lease.
func (e env) eventLease() {
	c, cancel := ctx()
	defer cancel()
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: "ev-1"},
		InvolvedObject: corev1.ObjectReference{Kind: "ConfigMap", Namespace: ns, Name: "page-00", APIVersion: "v1"},
		Reason:         "Test", Message: "netsy e2e", Type: "Normal",
		FirstTimestamp: metav1.Now(), LastTimestamp: metav1.Now(), Count: 1,
	}
	_, err := e.kube.CoreV1().Events(ns).Create(c, ev, metav1.CreateOptions{})
	if !check("create event", err) {
		return
	}
	kv, err := e.etcd.Get(c, "/registry/events/"+ns+"/ev-1")
	var lease int64
	check("the event's key in netsy is attached to a lease", func() error {
		if err != nil {
			return err
		}
		if len(kv.Kvs) != 1 || kv.Kvs[0].Lease == 0 {
			return fmt.Errorf("%d keys / no lease", len(kv.Kvs))
		}
		lease = kv.Kvs[0].Lease
		return nil
	}())
	if lease != 0 {
		ttl, err := e.etcd.TimeToLive(c, clientv3.LeaseID(lease), clientv3.WithAttachedKeys())
		check("that lease is alive (TTL > 0) and lists the event's key", func() error {
			if err != nil {
				return err
			}
			if ttl.TTL <= 0 {
				return fmt.Errorf("TTL %d", ttl.TTL)
			}
			for _, k := range ttl.Keys {
				if string(k) == "/registry/events/"+ns+"/ev-1" {
					return nil
				}
			}
			return fmt.Errorf("keys %q", ttl.Keys)
		}())
	}
}

// compaction: the apiserver's compactor (--etcd-compaction-interval) compacts netsy; old
// revisions, old continue tokens and exact reads at old resourceVersions then answer "expired".
func (e env) compaction(startRev int64, oldCont, oldRV string, deadline time.Duration) {
	// The compactor compacts to the revision it saw one interval earlier, so the first rounds
	// may predate this run's objects: wait for one beyond the early resourceVersion.
	beyond := max(startRev, rvOf(oldRV))
	var compacted int64
	err := poll(deadline, func() error {
		c, cancel := ctx()
		defer cancel()
		kv, err := e.etcd.Get(c, "compact_rev_key")
		if err != nil {
			return err
		}
		if len(kv.Kvs) != 1 || kv.Kvs[0].Version < 2 {
			return errors.New("compact_rev_key not yet written twice (no compaction yet)")
		}
		rev, err := strconv.ParseInt(string(kv.Kvs[0].Value), 10, 64)
		if err != nil {
			return err
		}
		if rev <= beyond {
			return fmt.Errorf("last compaction to revision %d, waiting for one beyond %d", rev, beyond)
		}
		// compact_rev_key holds the revision compacted to at the last round, but the
		// compaction call itself follows the key's update: probe until netsy says so.
		_, err = e.etcd.Get(c, "compact_rev_key", clientv3.WithRev(rev-1))
		if !errors.Is(err, rpctypes.ErrCompacted) {
			return fmt.Errorf("read at revision %d: %v, want compacted", rev-1, err)
		}
		compacted = rev
		return nil
	})
	check(fmt.Sprintf("the apiserver's compactor compacted netsy beyond this run's first revisions (within %v)", deadline), err)
	if compacted == 0 {
		return
	}
	fmt.Printf("     compacted to revision %d (start revision %d)\n", compacted, startRev)
	c, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if startRev > 0 && startRev < compacted {
		_, err := e.etcd.Get(c, "/registry/namespaces/default", clientv3.WithRev(startRev))
		check("netsy: a read at the start revision is compacted", want(func(err error) bool { return errors.Is(err, rpctypes.ErrCompacted) }, err))
	}
	if oldCont != "" && rvOf(oldRV) < compacted {
		// With ListFromCacheSnapshot the watch cache may serve old pages from its snapshots
		// until its own compactor (polling every 15 s) drops them; then the request reaches
		// netsy and comes back compacted, which the apiserver turns into 410.
		cms := e.kube.CoreV1().ConfigMaps(ns)
		expired := func(err error) error {
			if err == nil {
				return errors.New("still served (from the watch cache?)")
			}
			if !apierrors.IsResourceExpired(err) && !apierrors.IsGone(err) {
				return fmt.Errorf("wrong error: %v", err)
			}
			return nil
		}
		check("an old continue token: 410 Expired (within 60 s)", poll(60*time.Second, func() error {
			_, err := cms.List(c, metav1.ListOptions{LabelSelector: "set=page", Limit: 10, Continue: oldCont})
			return expired(err)
		}))
		check("list at an exact compacted resourceVersion: 410 (within 60 s)", poll(60*time.Second, func() error {
			_, err := cms.List(c, metav1.ListOptions{LabelSelector: "set=page", ResourceVersion: oldRV,
				ResourceVersionMatch: metav1.ResourceVersionMatchExact})
			return expired(err)
		}))
	} else {
		check("the early resourceVersion is older than the compaction", fmt.Errorf("rv %s, compacted %d", oldRV, compacted))
	}
	list, err := e.kube.CoreV1().ConfigMaps(ns).List(c, metav1.ListOptions{LabelSelector: "set=page", Limit: 10})
	check("a fresh paginated list after compaction works", func() error {
		if err != nil {
			return err
		}
		if len(list.Items) != 10 || list.Continue == "" {
			return fmt.Errorf("%d items", len(list.Items))
		}
		return nil
	}())
}

// deleteNamespace: without kube-controller-manager nobody empties a namespace, so the test
// finalizes it itself; the object then leaves storage and the namespace watch sees it go.
func (e env) deleteNamespace(w collected) {
	defer w.stop()
	c, cancel := ctx()
	defer cancel()
	check("delete namespace", e.kube.CoreV1().Namespaces().Delete(c, ns, metav1.DeleteOptions{}))
	got, err := e.kube.CoreV1().Namespaces().Get(c, ns, metav1.GetOptions{})
	check("namespace is Terminating", func() error {
		if err != nil {
			return err
		}
		if got.DeletionTimestamp == nil || got.Status.Phase != corev1.NamespaceTerminating {
			return fmt.Errorf("phase %s", got.Status.Phase)
		}
		return nil
	}())
	if err == nil {
		got.Spec.Finalizers = nil
		_, err = e.kube.CoreV1().Namespaces().Finalize(c, got, metav1.UpdateOptions{})
		check("finalize namespace", err)
	}
	check("namespace is gone", poll(30*time.Second, func() error {
		_, err := e.kube.CoreV1().Namespaces().Get(c, ns, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	}))
	if w.events != nil {
		check("namespace watch saw ADDED, then DELETED", expectLoose(w.events, ns, 20*time.Second))
	}
}

// expectLoose: ADDED first, any MODIFIED, then DELETED.
func expectLoose(ch <-chan watch.Event, name string, timeout time.Duration) error {
	deadline := time.After(timeout)
	var seen []string
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return fmt.Errorf("watch closed after %v", seen)
			}
			if ev.Type == watch.Bookmark {
				continue
			}
			if ev.Type == watch.Error {
				return fmt.Errorf("watch error after %v: %v", seen, apierrors.FromObject(ev.Object))
			}
			seen = append(seen, string(ev.Type))
			if len(seen) == 1 && ev.Type != watch.Added {
				return fmt.Errorf("first event %s", ev.Type)
			}
			if ev.Type == watch.Deleted {
				return nil
			}
		case <-deadline:
			return fmt.Errorf("timed out; seen %v", seen)
		}
	}
}
