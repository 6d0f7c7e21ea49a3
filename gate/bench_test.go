package gate_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/confsync/confsync/gate"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testpki"
	"golang.org/x/crypto/bcrypt"
)

// benchACL is the site's ACL with the generated per-pool rules of two
// datacenters and 100 services each.
func benchACL() string {
	var b strings.Builder
	b.WriteString(gate.SiteACL)
	for _, dc := range []string{"eqiad", "codfw"} {
		for i := range 100 {
			fmt.Fprintf(&b, "[[acl]]\nprefix = \"/conftool/v1/pools/%s/svc%d\"\nusers = [\"root\", \"conftool\", \"pool-%s-svc%d\"]\n", dc, i, dc, i)
		}
	}
	return b.String()
}

func BenchmarkACLMayWrite(b *testing.B) {
	acl, err := gate.ParseACL("acl.toml", []byte(benchACL()))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if !acl.MayWrite("/conftool/v1/pools/eqiad/svc42/apache2/mw1042.eqiad.wmnet", "pool-eqiad-svc42") {
			b.Fatal("denied")
		}
	}
}

func BenchmarkCredentialCheck(b *testing.B) {
	cost10, _ := bcrypt.GenerateFromPassword([]byte("bcrypt10-pw"), 10)
	users, err := gate.ParseHtpasswd("htpasswd", []byte(siteHtpasswd+"bcrypt10:"+string(cost10)+"\n"))
	if err != nil {
		b.Fatal(err)
	}
	run := func(name, user, password string, want bool) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if ok, _ := users.Verify(user, password); ok != want {
					b.Fatal("unexpected result")
				}
			}
		})
	}
	run("cached-apr1", "conftool", "conftool-pw", true)
	run("cached-bcrypt10", "bcrypt10", "bcrypt10-pw", true)
	// A wrong password is never cached: the cost of every hash computation.
	run("uncached-apr1", "conftool", "wrong", false)
	run("uncached-bcrypt4", "pool-eqiad-appserver", "wrong", false)
	run("uncached-bcrypt10", "bcrypt10", "wrong", false)
}

// BenchmarkDecision is the gate's own work for an authenticated write
// (cached credentials, a 200-rule ACL) that it refuses without contacting
// etcd: everything but the proxying.
func BenchmarkDecision(b *testing.B) {
	dir := b.TempDir()
	os.WriteFile(filepath.Join(dir, "acl.toml"), []byte(benchACL()), 0o600)
	os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(siteHtpasswd), 0o600)
	srv, err := gate.New(gate.Config{
		Upstreams:    []string{"http://127.0.0.1:1"},
		ACLFile:      filepath.Join(dir, "acl.toml"),
		HtpasswdFile: filepath.Join(dir, "htpasswd"),
	})
	if err != nil {
		b.Fatal(err)
	}
	r := httptest.NewRequest("PUT", "/v2/keys/spicerack/locks/x?value=1", nil)
	r.SetBasicAuth("conftool", "conftool-pw")
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, r)
		if w.Code != http.StatusUnauthorized {
			b.Fatal(w.Code)
		}
	}
}

// BenchmarkGET compares GET of one key straight from an in-process etcd
// with the same GET through a TLS gate (keep-alive on both legs): without
// rate limits, with the limiter on (a bucket per client, as by default,
// but with room for the benchmark's rate), and at the default limits,
// where nearly every request is refused with 429 (how fast the gate sheds
// a flood).
func BenchmarkGET(b *testing.B) {
	etcd := etcdtest.New(b)
	pki := testpki.New(b)
	etcd.Set(b, "/conftool/v1/pools/eqiad/appserver/apache2/mw1", `{"pooled":"yes","weight":10}`)
	var tlsClient *http.Client
	gateway := func(limit gate.RateLimit) string {
		srv, err := gate.New(gate.Config{Upstreams: []string{etcd.URL()}, TLSCertFile: pki.ServerCert, TLSKeyFile: pki.ServerKey,
			ClientLimit: limit, UserLimit: gate.RateLimit{Rate: gate.DefaultUserRate, Burst: gate.DefaultUserBurst}})
		if err != nil {
			b.Fatal(err)
		}
		ts := httptest.NewUnstartedServer(srv)
		ts.StartTLS() // httptest's certificate, the same for every server
		b.Cleanup(ts.Close)
		if tlsClient == nil {
			tlsClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64,
				TLSClientConfig: ts.Client().Transport.(*http.Transport).TLSClientConfig}}
		}
		return ts.URL
	}
	cases := []struct {
		name, base string
		client     **http.Client
		want       int
	}{
		{"direct", etcd.URL(), nil, 200},
		{"gate-tls", gateway(gate.RateLimit{}), &tlsClient, 200},
		{"gate-tls-limiter-on", gateway(gate.RateLimit{Rate: 1e12, Burst: 1e9}), &tlsClient, 200},
		{"gate-tls-over-default-limit", gateway(gate.RateLimit{Rate: gate.DefaultClientRate, Burst: gate.DefaultClientBurst}), &tlsClient, 0},
	}
	plain := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for _, c := range cases {
		client := plain
		if c.client != nil {
			client = *c.client
		}
		b.Run(c.name, func(b *testing.B) {
			url := c.base + "/v2/keys/conftool/v1/pools/eqiad/appserver/apache2/mw1"
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Get(url)
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if c.want != 0 && resp.StatusCode != c.want {
						b.Fatalf("GET: %s", resp.Status)
					}
				}
			})
		})
	}
}

// BenchmarkRateLimit is the limiter's own cost per request: a write the
// gate refuses itself (read-only), from 1000 client addresses, without and
// with a bucket per client.
func BenchmarkRateLimit(b *testing.B) {
	for _, c := range []struct {
		name  string
		limit gate.RateLimit
	}{{"off", gate.RateLimit{}}, {"on", gate.RateLimit{Rate: 1e12, Burst: 1e9}}} {
		b.Run(c.name, func(b *testing.B) {
			srv, err := gate.New(gate.Config{Upstreams: []string{"http://127.0.0.1:1"}, ReadOnly: true, ClientLimit: c.limit})
			if err != nil {
				b.Fatal(err)
			}
			reqs := make([]*http.Request, 1000)
			for i := range reqs {
				reqs[i] = httptest.NewRequest("PUT", "/v2/keys/x", nil)
				reqs[i].RemoteAddr = fmt.Sprintf("10.64.%d.%d:4242", i/256, i%256)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				w := httptest.NewRecorder()
				srv.ServeHTTP(w, reqs[i%len(reqs)])
				if w.Code != http.StatusForbidden {
					b.Fatal(w.Code)
				}
				i++
			}
		})
	}
}
