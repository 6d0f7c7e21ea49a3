package etcdtest_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testpki"
	client "go.etcd.io/etcd/client/v2"
)

func TestIndependentClustersAndRestart(t *testing.T) {
	a := etcdtest.New(t)
	b := etcdtest.New(t)
	if a.ClusterID() == b.ClusterID() {
		t.Fatalf("two servers share cluster ID %s", a.ClusterID())
	}
	a.Set(t, "/conftool/v1/x", "1")
	if _, err := b.Client().Get(context.Background(), "/conftool/v1/x", nil); !client.IsKeyNotFound(err) {
		t.Fatalf("key leaked into the other cluster: %v", err)
	}

	id, url := a.ClusterID(), a.URL()
	a.Stop()
	if _, err := a.Client().Get(context.Background(), "/conftool/v1/x", nil); err == nil {
		t.Fatal("stopped server still answers")
	}
	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	if a.ClusterID() != id || a.URL() != url {
		t.Fatalf("restart changed identity: %s %s -> %s %s", id, url, a.ClusterID(), a.URL())
	}
	resp, err := a.Client().Get(context.Background(), "/conftool/v1/x", nil)
	if err != nil || resp.Node.Value != "1" {
		t.Fatalf("data lost across restart: %v %v", resp, err)
	}
}

func TestTLSServer(t *testing.T) {
	pki := testpki.New(t)
	s := etcdtest.New(t, etcdtest.Options{TLS: &etcdtest.TLSFiles{
		CertFile: pki.ServerCert, KeyFile: pki.ServerKey, ClientCAFile: pki.CAFile,
	}})
	tr := &http.Transport{TLSClientConfig: pki.ClientTLS(true)}
	if _, err := s.Client(tr).Set(context.Background(), "/a", "b", nil); err != nil {
		t.Fatalf("TLS write with client cert: %v", err)
	}
	noCert := &http.Transport{TLSClientConfig: pki.ClientTLS(false)}
	if _, err := s.Client(noCert).Get(context.Background(), "/a", nil); err == nil {
		t.Fatal("server accepted a client without a certificate")
	}
}
