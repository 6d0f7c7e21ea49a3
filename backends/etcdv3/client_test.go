package etcdv3_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testpki"
)

// seedPaths writes keys that test how flat v3 keys become a tree.
func seedPaths(w *writer) {
	for k, v := range map[string]string{
		"/app": "self", "/app/a": "1", "/app/a/b": "2", "/app/c/d/e": "3",
		"/apple": "sibling", "/app-x": "sibling", "/app.x": "sibling", // inside [/app, /app0), not below /app
		"/app//empty": "unclean", "/app/slash/": "unclean", // no clean path
		"/app/_hidden/x": "hidden", "/other": "x",
	} {
		w.put(k, v)
	}
}

// Fetch reads a root by whole path segments: siblings that share its
// name's start, keys that are not clean paths and hidden keys stay out;
// a key may hold a value and have keys below it.
func TestFetchReadsWholeSegments(t *testing.T) {
	srv := etcdtest.New(t)
	w := newWriter(t, nil, "", "", srv.URL())
	seedPaths(w)
	rev := w.put("/unrelated", "moves the revision")
	c := newClient(t, etcd.Config{Endpoints: []string{srv.URL()}})
	snap, err := c.Fetch(context.Background(), "/app")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"/app": "self", "/app/a": "1", "/app/a/b": "2", "/app/c/d/e": "3"}
	if got := snap.Tree.Leaves("/"); !reflect.DeepEqual(got, want) {
		t.Fatalf("read %s, want %s", describeValues(got), describeValues(want))
	}
	if snap.Index != uint64(rev) || snap.ClusterID != srv.ClusterID() {
		t.Fatalf("index %d cluster %q, want %d and %q", snap.Index, snap.ClusterID, rev, srv.ClusterID())
	}
	empty, err := c.Fetch(context.Background(), "/nothing/here")
	if err != nil || empty.Tree.Len() != 0 || empty.Index != uint64(rev) {
		t.Fatalf("missing root: %v, %d keys at %d", err, empty.Tree.Len(), empty.Index)
	}
	whole, err := c.Fetch(context.Background(), "/")
	if err != nil || whole.Tree.Len() != 9 {
		t.Fatalf("whole keyspace: %v, %v", err, describeValues(whole.Tree.Leaves("/")))
	}
}

// Consistent reads every root at the revision of its first read: a write
// between two roots' reads is not half seen.
func TestConsistentReadsOneRevision(t *testing.T) {
	srv := etcdtest.New(t)
	w := newWriter(t, nil, "", "", srv.URL())
	w.put("/a/k", "old")
	w.put("/b/k", "old")
	c := newClient(t, etcd.Config{Endpoints: []string{srv.URL()}})
	src := c.Consistent()
	a, err := src.Fetch(context.Background(), "/a")
	if err != nil {
		t.Fatal(err)
	}
	w.put("/a/k", "new")
	w.put("/b/k", "new")
	b, err := src.Fetch(context.Background(), "/b")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := b.Tree.Get("/b/k"); v != "old" || b.Index != a.Index {
		t.Fatalf("second root read %q at %d, want the first read's revision %d", v, b.Index, a.Index)
	}
	fresh, _ := c.Fetch(context.Background(), "/b")
	if v, _ := fresh.Tree.Get("/b/k"); v != "new" {
		t.Fatalf("a plain Fetch read %q", v)
	}
	// The revision compacted away under the run: an error, never a mix.
	w.compact(int64(fresh.Index))
	if _, err := src.Fetch(context.Background(), "/a"); err == nil || !strings.Contains(err.Error(), "compacted") {
		t.Fatalf("read at a compacted revision: %v", err)
	}
}

// TLS with a client certificate and a v3 user: the backend reads with
// both; a wrong password is an error that names the endpoint.
func TestTLSAndUser(t *testing.T) {
	pki := testpki.New(t)
	srv := etcdtest.New(t, etcdtest.Options{TLS: &etcdtest.TLSFiles{
		CertFile: pki.ServerCert, KeyFile: pki.ServerKey, ClientCAFile: pki.CAFile}})
	admin := newWriter(t, pki.ClientTLS(true), "", "", srv.URL())
	admin.put("/conftool/v1/k", "v")
	ctx := context.Background()
	read := func(cfg etcd.Config) error {
		snap, err := newClient(t, cfg).Fetch(ctx, "/conftool/v1")
		if err != nil {
			return err
		}
		if v, _ := snap.Tree.Get("/conftool/v1/k"); v != "v" {
			t.Fatalf("read %q", v)
		}
		return nil
	}
	// Endpoints without a scheme, as confd's etcdv3 backend takes them,
	// get https when TLS is configured.
	cfg := etcd.Config{Endpoints: []string{srv.Addr()}, CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
	if err := read(cfg); err != nil {
		t.Fatalf("TLS to a bare host:port: %v", err)
	}
	for _, step := range []func() error{
		func() error { _, err := admin.cli.UserAdd(ctx, "root", "secret"); return err },
		func() error { _, err := admin.cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.cli.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Endpoints, cfg.Username, cfg.Password = []string{srv.URL()}, "root", "secret"
	if err := read(cfg); err != nil {
		t.Fatalf("TLS and a user: %v", err)
	}
	cfg.Password = "wrong"
	err := read(cfg)
	var unreachable *etcd.UnreachableError
	if !errors.As(err, &unreachable) || !strings.Contains(err.Error(), srv.URL()) || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("wrong password: %v", err)
	}
}

// A cluster that is down is an error naming every endpoint.
func TestFetchNamesEveryEndpoint(t *testing.T) {
	srv := etcdtest.New(t)
	url := srv.URL()
	srv.Stop()
	_, err := newClient(t, etcd.Config{Endpoints: []string{url, "http://127.0.0.1:1"}, RequestTimeout: 500e6}).
		Fetch(context.Background(), "/a")
	if err == nil || !strings.Contains(err.Error(), url) || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("got %v", err)
	}
}
