package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testpki"
	"github.com/confsync/confsync/internal/testutil"
	client "go.etcd.io/etcd/client/v2"
	"golang.org/x/net/dns/dnsmessage"
)

func newClient(t *testing.T, cfg etcd.Config) *etcd.Client {
	t.Helper()
	c, err := etcd.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestFetchReadsWholeRootAtOneIndex(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/conftool/v1/pools/eqiad/appserver/apache2/mw1", `{"weight": 10, "pooled": "yes"}`)
	srv.Set(t, "/conftool/v1/pools/eqiad/appserver/apache2/mw2", `{"weight": 30, "pooled": "no"}`)
	srv.Set(t, "/conftool/v1/discovery/appservers-rw/eqiad", `{"pooled": true}`)
	last := srv.Set(t, "/other/x", "y")

	c := newClient(t, etcd.Config{Endpoints: []string{srv.URL()}, Quorum: true})
	snap, err := c.Fetch(context.Background(), "/conftool/v1/pools/")
	if err != nil {
		t.Fatal(err)
	}
	if snap.Root != "/conftool/v1/pools" || snap.Tree.Len() != 2 {
		t.Fatalf("snapshot root %q with %d leaves, want /conftool/v1/pools with 2", snap.Root, snap.Tree.Len())
	}
	if v, _ := snap.Tree.Get("/conftool/v1/pools/eqiad/appserver/apache2/mw2"); v != `{"weight": 30, "pooled": "no"}` {
		t.Fatalf("value %q", v)
	}
	if snap.Index != last.Index {
		t.Fatalf("index %d, want the cluster index %d", snap.Index, last.Index)
	}
	if snap.ClusterID != srv.ClusterID() {
		t.Fatalf("cluster ID %q, want %q", snap.ClusterID, srv.ClusterID())
	}
}

func TestFetchOfMissingRootIsEmpty(t *testing.T) {
	srv := etcdtest.New(t)
	last := srv.Set(t, "/a", "1")
	c := newClient(t, etcd.Config{Endpoints: []string{srv.URL()}})
	snap, err := c.Fetch(context.Background(), "/nope/nothing")
	if err != nil {
		t.Fatalf("missing root is an error: %v", err)
	}
	if snap.Tree.Len() != 0 || snap.Index != last.Index {
		t.Fatalf("got %d leaves at %d, want 0 at %d", snap.Tree.Len(), snap.Index, last.Index)
	}
}

func TestFailoverToALiveEndpoint(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/k", "v")
	dead := deadURL(t)
	c := newClient(t, etcd.Config{Endpoints: []string{dead, srv.URL()}})
	snap, err := c.Fetch(context.Background(), "/k")
	if err != nil {
		t.Fatalf("no failover: %v", err)
	}
	if v, _ := snap.Tree.Get("/k"); v != "v" {
		t.Fatalf("value %q", v)
	}
}

func TestUnreachableNamesEveryEndpoint(t *testing.T) {
	a, b := deadURL(t), deadURL(t)
	c := newClient(t, etcd.Config{Endpoints: []string{a, b}})
	_, err := c.Fetch(context.Background(), "/k")
	var unreachable *etcd.UnreachableError
	if !errors.As(err, &unreachable) {
		t.Fatalf("error %v is not an UnreachableError", err)
	}
	for _, ep := range []string{a, b} {
		if !strings.Contains(err.Error(), ep) {
			t.Errorf("error %q does not name %s", err, ep)
		}
	}
}

func TestTLSWithClientCertificate(t *testing.T) {
	pki := testpki.New(t)
	srv := etcdtest.New(t, etcdtest.Options{TLS: &etcdtest.TLSFiles{
		CertFile: pki.ServerCert, KeyFile: pki.ServerKey, ClientCAFile: pki.CAFile,
	}})
	good := newClient(t, etcd.Config{Endpoints: []string{srv.URL()},
		CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey})
	if _, err := good.Fetch(context.Background(), "/"); err != nil {
		t.Fatalf("verified TLS with client cert: %v", err)
	}
	noCA := newClient(t, etcd.Config{Endpoints: []string{srv.URL()}, CertFile: pki.ClientCert, KeyFile: pki.ClientKey})
	if _, err := noCA.Fetch(context.Background(), "/"); err == nil {
		t.Fatal("server certificate accepted without the CA")
	}
	insecure := newClient(t, etcd.Config{Endpoints: []string{srv.URL()}, Insecure: true, CertFile: pki.ClientCert, KeyFile: pki.ClientKey})
	if _, err := insecure.Fetch(context.Background(), "/"); err != nil {
		t.Fatalf("-client-insecure: %v", err)
	}
}

func TestBadTLSFilesNameTheFile(t *testing.T) {
	_, err := etcd.New(context.Background(), etcd.Config{Endpoints: []string{"https://127.0.0.1:1"}, CAFile: "/nonexistent/ca.pem"})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/ca.pem") {
		t.Fatalf("error %v does not name the CA file", err)
	}
	_, err = etcd.New(context.Background(), etcd.Config{Endpoints: []string{"https://127.0.0.1:1"}, CertFile: "/x/cert.pem"})
	if err == nil || !strings.Contains(err.Error(), "certificate and key") {
		t.Fatalf("cert without key: %v", err)
	}
	_, err = etcd.New(context.Background(), etcd.Config{Endpoints: []string{"127.0.0.1:2379"}})
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:2379") {
		t.Fatalf("endpoint without scheme: %v", err)
	}
}

func TestBasicAuth(t *testing.T) {
	srv := etcdtest.New(t)
	ctx := context.Background()
	cc, _ := client.New(client.Config{Endpoints: []string{srv.URL()}})
	auth := client.NewAuthUserAPI(cc)
	if err := auth.AddUser(ctx, "root", "rootpw"); err != nil {
		t.Fatal(err)
	}
	if err := client.NewAuthAPI(cc).Enable(ctx); err != nil {
		t.Fatal(err)
	}
	// With auth on, the guest role still reads; write a key as root and
	// check both a good and a bad password.
	root := newClient(t, etcd.Config{Endpoints: []string{srv.URL()}, Username: "root", Password: "rootpw"})
	if _, err := root.Keys().Set(ctx, "/secret", "s", nil); err != nil {
		t.Fatalf("authenticated write: %v", err)
	}
	bad := newClient(t, etcd.Config{Endpoints: []string{srv.URL()}, Username: "root", Password: "wrong"})
	if _, err := bad.Fetch(ctx, "/secret"); err == nil {
		t.Fatal("wrong password accepted")
	}
}

func TestSRVDiscovery(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/k", "v")
	_, port, _ := net.SplitHostPort(srv.Addr())
	var portNum uint16
	fmt.Sscan(port, &portNum)
	q := dnsmessage.Question{Name: dnsmessage.MustNewName("_etcd._tcp.example.test."), Type: dnsmessage.TypeSRV, Class: dnsmessage.ClassINET}
	resolver := testutil.StartDNS(t, testutil.DNSRecords{q: {testutil.SRVRecord(q.Name.String(), "localhost.", 0, 10, portNum)}})
	c := newClient(t, etcd.Config{SRVDomain: "example.test", Resolver: resolver})
	if got := c.Endpoints(); len(got) != 1 || got[0] != "http://localhost:"+port {
		t.Fatalf("endpoints %v", got)
	}
	if _, err := c.Fetch(context.Background(), "/k"); err != nil {
		t.Fatal(err)
	}
	byRecord := newClient(t, etcd.Config{SRVRecord: "_etcd._tcp.example.test", Scheme: "http", Resolver: resolver})
	if len(byRecord.Endpoints()) != 1 {
		t.Fatalf("endpoints %v", byRecord.Endpoints())
	}
	_, err := etcd.New(context.Background(), etcd.Config{SRVRecord: "_missing._tcp.example.test", Resolver: resolver})
	if err == nil || !strings.Contains(err.Error(), "_missing._tcp.example.test") {
		t.Fatalf("missing record: %v", err)
	}
}

func TestPollDeliversEventsInOrder(t *testing.T) {
	srv := etcdtest.New(t)
	first := srv.Set(t, "/root/a", "1")
	srv.Set(t, "/elsewhere", "x")
	second := srv.Set(t, "/root/b/c", "2")
	c := newClient(t, etcd.Config{Endpoints: []string{srv.URL()}})
	p, err := c.NewPoller("/root")
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.Poll(context.Background(), first.Index, 30*time.Second)
	if err != nil || res.Event == nil || res.Event.Node.Key != "/root/a" {
		t.Fatalf("first poll: %+v %v", res, err)
	}
	res, err = p.Poll(context.Background(), res.Event.Node.ModifiedIndex+1, 30*time.Second)
	if err != nil || res.Event == nil || res.Event.Node.ModifiedIndex != second.Index {
		t.Fatalf("second poll skipped or misordered: %+v %v", res, err)
	}
}

// etcd ends a long poll with an empty 200 when it shuts the watch down;
// the poll asks again and still gets the event.
func TestPollRetriesAnEmptyAnswer(t *testing.T) {
	srv := etcdtest.New(t)
	proxy := etcdtest.NewProxy(t, srv.URL())
	ev := srv.Set(t, "/root/a", "1")
	proxy.EmptyWatches(2)
	c := newClient(t, etcd.Config{Endpoints: []string{proxy.URL()}})
	p, _ := c.NewPoller("/root")
	res, err := p.Poll(context.Background(), ev.Index, 30*time.Second)
	if err != nil || res.Event == nil || res.Event.Node.ModifiedIndex != ev.Index {
		t.Fatalf("poll after empty answers: %+v %v", res, err)
	}
	if n := proxy.Count(func(r etcdtest.Request) bool { return r.Watch() }); n != 3 {
		t.Fatalf("%d long polls, want 2 empty ones and the real one", n)
	}
}

func TestPollReportsClearedHistory(t *testing.T) {
	srv := etcdtest.New(t)
	start := srv.Index(t)
	for i := 0; i < 1010; i++ {
		srv.Set(t, "/busy/k", fmt.Sprint(i))
	}
	c := newClient(t, etcd.Config{Endpoints: []string{srv.URL()}})
	p, _ := c.NewPoller("/quiet")
	_, err := p.Poll(context.Background(), start+1, 30*time.Second)
	if !etcd.IsHistoryCleared(err) {
		t.Fatalf("want error 401, got %v", err)
	}
}

func TestQuietRootAdvancesWhileClusterIsBusy(t *testing.T) {
	srv := etcdtest.New(t)
	start := srv.Set(t, "/quiet/k", "v").Index
	c := newClient(t, etcd.Config{Endpoints: []string{srv.URL()}})
	p, _ := c.NewPoller("/quiet")
	waitIndex := start + 1
	// Each round: the cluster moves on elsewhere, then a poll of the quiet
	// root times out. The proven-quiet index must follow the cluster, so
	// the resume index never falls out of the 1000-event history.
	for round := 0; round < 3; round++ {
		for i := 0; i < 600; i++ {
			srv.Set(t, "/busy/k", fmt.Sprint(i))
		}
		busyIndex := srv.Index(t)
		res, err := p.Poll(context.Background(), waitIndex, 2*time.Second)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if res.Event != nil {
			t.Fatalf("round %d: unexpected event %+v", round, res.Event)
		}
		if res.QuietThrough < busyIndex {
			t.Fatalf("round %d: quiet through %d, cluster at %d", round, res.QuietThrough, busyIndex)
		}
		waitIndex = res.QuietThrough + 1
	}
	// And an event after all that still arrives.
	ev := srv.Set(t, "/quiet/k", "changed")
	res, err := p.Poll(context.Background(), waitIndex, 30*time.Second)
	if err != nil || res.Event == nil || res.Event.Node.ModifiedIndex != ev.Index {
		t.Fatalf("event after quiet rounds: %+v %v", res, err)
	}
}

func TestPollSurvivesServerRestart(t *testing.T) {
	srv := etcdtest.New(t)
	start := srv.Index(t)
	c := newClient(t, etcd.Config{Endpoints: []string{srv.URL()}})
	p, _ := c.NewPoller("/root")
	type result struct {
		res etcd.PollResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := p.Poll(context.Background(), start+1, time.Minute)
		done <- result{r, err}
	}()
	srv.Stop()
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	ev := srv.Set(t, "/root/x", "1")
	// The interrupted poll either reports the outage or, having retried an
	// empty answer, the event itself; a retry from the same index must then
	// see the event.
	r := <-done
	if r.err == nil && r.res.Event != nil {
		if r.res.Event.Node.ModifiedIndex != ev.Index {
			t.Fatalf("wrong event %+v", r.res.Event)
		}
		return
	}
	res, err := p.Poll(context.Background(), start+1, 30*time.Second)
	if err != nil || res.Event == nil || res.Event.Node.ModifiedIndex != ev.Index {
		t.Fatalf("after restart: %+v %v (first attempt: %+v %v)", res, err, r.res, r.err)
	}
}

// deadURL is an http URL on which nothing listens.
func deadURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}
