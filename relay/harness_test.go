package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/watch"
	"github.com/confsync/confsync/internal/testutil"
	"github.com/confsync/confsync/relay"
)

// testRelay is a relay.Run serving on a loopback port.
type testRelay struct {
	URL  string
	Addr string
	stop func()
}

// startRelay runs a relay of prefix in front of endpoints until the test
// ends, with a watch quick to notice quiet (2s polls) and to retry.
// adjust, when given, changes the configuration first. It returns once
// the relay serves the prefix from memory.
func startRelay(t *testing.T, endpoints []string, prefix string, adjust ...func(*relay.RunConfig)) *testRelay {
	t.Helper()
	return startRelayOn(t, "127.0.0.1:0", endpoints, prefix, true, adjust...)
}

func startRelayOn(t *testing.T, addr string, endpoints []string, prefix string, waitCurrent bool, adjust ...func(*relay.RunConfig)) *testRelay {
	t.Helper()
	var ln net.Listener
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond) // the previous relay's port is being let go
	}
	if err != nil {
		t.Fatal(err)
	}
	cfg := relay.RunConfig{
		Config:   relay.Config{Logger: slog.New(slog.NewTextHandler(testLog{t}, nil))},
		Etcd:     etcd.Config{Endpoints: endpoints},
		Prefix:   prefix,
		Listener: ln,
		Watch:    watch.Config{PollTimeout: 2 * time.Second, MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond},
	}
	for _, a := range adjust {
		a(&cfg)
	}
	scheme := "http"
	if cfg.TLSCertFile != "" {
		scheme = "https"
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx, cfg) }()
	var once sync.Once
	r := &testRelay{URL: scheme + "://" + ln.Addr().String(), Addr: ln.Addr().String()}
	r.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("relay.Run: %v", err)
			}
		})
	}
	t.Cleanup(r.stop)
	if waitCurrent && scheme == "http" {
		testutil.Eventually(t, "the relay serving "+prefix, func() bool {
			a := get(r.URL + "/health")
			return a.status == http.StatusOK
		})
	}
	return r
}

// testLog sends a relay's logs to the test's log, shown with -v or when
// the test fails.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// answer is what a server said to one request.
type answer struct {
	status   int
	header   http.Header
	body     []byte
	timedOut bool // no answer (or no end of one) within the wait
	err      error
}

var plainClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

func get(u string) answer { return do(plainClient, http.MethodGet, u, nil, 10*time.Second) }

// do sends a request and reads the whole answer, giving up after wait.
func do(c *http.Client, method, u string, form url.Values, wait time.Duration) answer {
	return doCtx(context.Background(), c, method, u, form, wait)
}

// doCtx is do, also giving up when parent ends.
func doCtx(parent context.Context, c *http.Client, method, u string, form url.Values, wait time.Duration) answer {
	ctx, cancel := context.WithTimeout(parent, wait)
	defer cancel()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return answer{err: err}
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := c.Do(req)
	if err != nil {
		return answer{err: err, timedOut: errors.Is(ctx.Err(), context.DeadlineExceeded)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header, body: b}
	if err != nil {
		a.err, a.timedOut = err, ctx.Err() != nil
	}
	return a
}

// pending is a request whose headers have arrived and whose body is still
// to come: a registered watch.
type pending struct {
	done chan answer
}

// startWatch sends a wait and returns once its headers are in (etcd and
// the relay send them when the watch is registered); the body is read in
// the background, for at most wait.
func startWatch(t *testing.T, u string, wait time.Duration) *pending {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := plainClient.Do(req)
	p := &pending{done: make(chan answer, 1)}
	if err != nil {
		cancel()
		p.done <- answer{err: err, timedOut: ctx.Err() != nil}
		return p
	}
	go func() {
		defer cancel()
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		a := answer{status: resp.StatusCode, header: resp.Header, body: b}
		if err != nil {
			a.err, a.timedOut = err, ctx.Err() != nil
		}
		p.done <- a
	}()
	return p
}

func (p *pending) result() answer { return <-p.done }

// etcdIndex is the X-Etcd-Index of a GET of key at base.
func etcdIndex(t *testing.T, base, key string) uint64 {
	t.Helper()
	a := get(base + "/v2/keys" + key)
	if a.err != nil {
		t.Fatalf("GET %s%s: %v", base, key, a.err)
	}
	idx, err := strconv.ParseUint(a.header.Get("X-Etcd-Index"), 10, 64)
	if err != nil {
		t.Fatalf("GET %s%s: X-Etcd-Index %q", base, key, a.header.Get("X-Etcd-Index"))
	}
	return idx
}

// waitSynced waits until the relay's index is etcd's.
func waitSynced(t *testing.T, etcdURL, relayURL, key string) {
	t.Helper()
	testutil.Eventually(t, "the relay at etcd's index", func() bool {
		return etcdIndex(t, etcdURL, key) == etcdIndex(t, relayURL, key)
	})
}

// write sends a v2 write to etcd and returns its event.
func write(t *testing.T, base, method, key string, form url.Values) *etcd.Event {
	t.Helper()
	u := base + "/v2/keys" + key
	var body url.Values
	if method == http.MethodDelete {
		if len(form) > 0 {
			u += "?" + form.Encode()
		}
	} else {
		body = form
		if body == nil {
			body = url.Values{}
		}
	}
	a := do(plainClient, method, u, body, 10*time.Second)
	if a.err != nil || a.status >= 300 {
		t.Fatalf("%s %s %v: %d %s %v", method, key, form, a.status, a.body, a.err)
	}
	ev, err := etcd.DecodeEvent(a.body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, key, err)
	}
	return ev
}

func set(t *testing.T, base, key, value string) *etcd.Event {
	t.Helper()
	return write(t, base, http.MethodPut, key, url.Values{"value": {value}})
}

// decodeNode reads the node of a GET answer.
func decodeNode(t *testing.T, a answer) *etcd.Node {
	t.Helper()
	var body struct {
		Node *etcd.Node `json:"node"`
	}
	if a.err != nil || a.status != http.StatusOK {
		t.Fatalf("want a 200 GET answer, got %d %s %v", a.status, a.body, a.err)
	}
	if err := json.Unmarshal(a.body, &body); err != nil {
		t.Fatalf("decode %s: %v", a.body, err)
	}
	return body.Node
}

func value(t *testing.T, base, key string) string {
	t.Helper()
	n := decodeNode(t, get(base+"/v2/keys"+key))
	if n.Value == nil {
		t.Fatalf("%s has no value", key)
	}
	return *n.Value
}

func strconvU(n uint64) string { return strconv.FormatUint(n, 10) }

func (a answer) String() string {
	switch {
	case a.timedOut:
		return "(no answer in time)"
	case a.err != nil:
		return fmt.Sprintf("(error %v)", a.err)
	}
	return fmt.Sprintf("%d %s", a.status, strings.TrimSpace(string(a.body)))
}
