package etcd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confsync/confsync/backends"
	client "go.etcd.io/etcd/client/v2"
)

// Client talks to one etcd cluster. It is safe for concurrent use.
type Client struct {
	cfg       Config
	endpoints []string
	transport *http.Transport
	tap       *tap
	keys      client.KeysAPI
}

// New resolves the endpoints and builds a client. It does not contact etcd:
// a cluster that is down at start-up is the caller's normal case to handle.
func New(ctx context.Context, cfg Config) (*Client, error) {
	eps, err := cfg.ResolveEndpoints(ctx)
	if err != nil {
		return nil, err
	}
	tr, err := cfg.Transport()
	if err != nil {
		return nil, err
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	c := &Client{cfg: cfg, endpoints: eps, transport: tr, tap: &tap{base: tr}}
	c.keys, err = c.newKeysAPI(c.tap)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Client) newKeysAPI(t *tap) (client.KeysAPI, error) {
	cc, err := client.New(client.Config{
		Endpoints:               c.endpoints,
		Transport:               t,
		Username:                c.cfg.Username,
		Password:                c.cfg.Password,
		HeaderTimeoutPerRequest: c.cfg.RequestTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(c.endpoints, ", "), err)
	}
	return client.NewKeysAPI(cc), nil
}

// Keys is the v2 keys API of the cluster, for callers that write.
func (c *Client) Keys() client.KeysAPI { return c.keys }

// Endpoints are the URLs requests go to.
func (c *Client) Endpoints() []string { return append([]string(nil), c.endpoints...) }

// Transport is the HTTP transport every request to this cluster shares,
// with its TLS settings, for callers that speak HTTP to etcd themselves (a
// relay passing requests through).
func (c *Client) Transport() *http.Transport { return c.transport }

// BasicAuth is the configured user and password, "" when none.
func (c *Client) BasicAuth() (user, password string) { return c.cfg.Username, c.cfg.Password }

// ClusterID is the X-Etcd-Cluster-Id of the last response, "" before any.
func (c *Client) ClusterID() string { return c.tap.clusterID() }

// Close releases idle connections.
func (c *Client) Close() { c.transport.CloseIdleConnections() }

// Fetch reads every leaf under root with one recursive GET. A root that does
// not exist gives an empty tree at the index etcd reported.
func (c *Client) Fetch(ctx context.Context, root string) (*backends.Snapshot, error) {
	root = backends.CleanKey(root)
	resp, err := c.keys.Get(ctx, root, &client.GetOptions{Recursive: true, Quorum: c.cfg.Quorum})
	snap := &backends.Snapshot{Root: root, Tree: &backends.Tree{}, FetchedAt: time.Now()}
	var etcdErr client.Error
	switch {
	case errors.As(err, &etcdErr) && etcdErr.Code == client.ErrorCodeKeyNotFound:
		snap.Index = etcdErr.Index
	case err != nil:
		return nil, c.describe(err, "read "+root)
	default:
		snap.Index = resp.Index
		snap.Tree = TreeOf(resp.Node)
	}
	snap.ClusterID = c.ClusterID()
	return snap, nil
}

// TreeOf collects the leaves of a v2 node tree; directories only give shape.
func TreeOf(n *client.Node) *backends.Tree {
	var b backends.Builder
	var walk func(*client.Node)
	walk = func(n *client.Node) {
		if n == nil {
			return
		}
		if !n.Dir {
			b.Set(n.Key, n.Value)
			return
		}
		for _, child := range n.Nodes {
			walk(child)
		}
	}
	walk(n)
	return b.Tree()
}

// describe turns a client error into one that names the endpoints tried, so
// "connection refused" is never reported without saying to where.
func (c *Client) describe(err error, what string) error {
	return describe(c.endpoints, what, err)
}

func describe(endpoints []string, what string, err error) error {
	var cerr *client.ClusterError
	if errors.As(err, &cerr) {
		return &UnreachableError{Endpoints: endpoints, Op: what, Err: err}
	}
	return fmt.Errorf("etcd %s: %w", what, err)
}

// UnreachableError says that no endpoint answered.
type UnreachableError struct {
	Endpoints []string
	Op        string
	Err       error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("etcd unreachable: %s failed on every endpoint (%s): %s",
		e.Op, strings.Join(e.Endpoints, ", "), strings.TrimSpace(e.Err.Error()))
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// IsHistoryCleared reports etcd's error 401: the requested index has left
// the 1000-event history, so the watcher must re-read its root.
func IsHistoryCleared(err error) bool {
	var e client.Error
	return errors.As(err, &e) && e.Code == client.ErrorCodeEventIndexCleared
}

// IsKeyNotFound reports etcd's error 100.
func IsKeyNotFound(err error) bool {
	var e client.Error
	return errors.As(err, &e) && e.Code == client.ErrorCodeKeyNotFound
}

// A Poller long-polls one root, one request at a time. Each Poller has its
// own view of response headers, which is how it learns the index at which
// etcd registered the watch.
type Poller struct {
	root      string
	endpoints []string
	keys      client.KeysAPI
	tap       *tap
}

// NewPoller prepares long polls of root.
func (c *Client) NewPoller(root string) (*Poller, error) {
	t := &tap{base: c.transport, watches: &watchHeaders{}}
	keys, err := c.newKeysAPI(t)
	if err != nil {
		return nil, err
	}
	return &Poller{root: backends.CleanKey(root), endpoints: c.endpoints, keys: keys, tap: t}, nil
}

// PollResult is the outcome of one long poll.
type PollResult struct {
	// Event is the first change at or after the requested index, nil when
	// the poll ended without one.
	Event *client.Response
	// QuietThrough, when not zero, is an index up to which etcd has proved
	// that nothing under the root changed: the watch was registered live
	// at that index (headers flushed, no event in the history) and stayed
	// silent. Resuming at QuietThrough+1 is safe and keeps the resume index
	// inside etcd's history while the root is quiet. A value below
	// waitIndex-1 means the cluster's index went backwards (a restored or
	// replaced cluster): events the caller has not seen may exist below
	// waitIndex, and it should re-read the root.
	QuietThrough uint64
}

// quietProof is how long a registered watch must stay silent before its
// registration index counts as proof. A watch answered from history sends
// its event right behind the headers, so a second of silence cannot be one.
const quietProof = time.Second

// Poll waits up to maxWait for the first event under the root with index >=
// waitIndex. etcd's error 401 comes back as an error (see IsHistoryCleared);
// an empty 200 (the server closed the poll) is retried internally.
func (p *Poller) Poll(ctx context.Context, waitIndex uint64, maxWait time.Duration) (PollResult, error) {
	if waitIndex == 0 {
		waitIndex = 1
	}
	pollCtx, cancel := context.WithTimeout(ctx, maxWait)
	defer cancel()
	p.tap.watches.reset()
	w := p.keys.Watcher(p.root, &client.WatcherOptions{AfterIndex: waitIndex - 1, Recursive: true})
	resp, err := w.Next(pollCtx)
	if err == nil {
		return PollResult{Event: resp}, nil
	}
	if ctx.Err() != nil {
		return PollResult{}, ctx.Err()
	}
	if pollCtx.Err() != nil {
		if idx, ok := p.tap.watches.quietIndex(quietProof); ok {
			return PollResult{QuietThrough: idx}, nil
		}
		return PollResult{}, nil
	}
	return PollResult{}, describe(p.endpoints, "watch "+p.root, err)
}

// tap is the transport under the v2 client. It records the cluster ID of
// every response and, for a Poller, the headers of its watch requests.
type tap struct {
	base    *http.Transport
	lastID  atomic.Value // string
	watches *watchHeaders
}

func (t *tap) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	if id := resp.Header.Get("X-Etcd-Cluster-Id"); id != "" {
		t.lastID.Store(id)
	}
	if t.watches != nil && resp.StatusCode == http.StatusOK && req.URL.Query().Get("wait") == "true" {
		resp.Body = t.watches.observe(resp)
	}
	return resp, nil
}

// CancelRequest lets the v2 client abandon a request on the shared transport.
func (t *tap) CancelRequest(req *http.Request) {
	//lint:ignore SA1019 the v2 client cancels through this method.
	t.base.CancelRequest(req) //nolint:staticcheck
}

func (t *tap) clusterID() string {
	id, _ := t.lastID.Load().(string)
	return id
}

// watchHeaders remembers when the current watch response's headers arrived,
// the index they carried, and whether any body byte followed.
type watchHeaders struct {
	mu       sync.Mutex
	index    uint64
	at       time.Time
	bodyRead bool
}

func (w *watchHeaders) reset() {
	w.mu.Lock()
	w.index, w.at, w.bodyRead = 0, time.Time{}, false
	w.mu.Unlock()
}

func (w *watchHeaders) observe(resp *http.Response) io.ReadCloser {
	idx, err := strconv.ParseUint(resp.Header.Get("X-Etcd-Index"), 10, 64)
	w.mu.Lock()
	if err == nil {
		w.index, w.at, w.bodyRead = idx, time.Now(), false
	}
	w.mu.Unlock()
	return &watchBody{ReadCloser: resp.Body, headers: w}
}

// quietIndex returns the registration index if the headers came at least
// minQuiet ago and no body byte has arrived since.
func (w *watchHeaders) quietIndex(minQuiet time.Duration) (uint64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.index == 0 || w.bodyRead || time.Since(w.at) < minQuiet {
		return 0, false
	}
	return w.index, true
}

type watchBody struct {
	io.ReadCloser
	headers *watchHeaders
}

func (b *watchBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.headers.mu.Lock()
		b.headers.bodyRead = true
		b.headers.mu.Unlock()
	}
	return n, err
}
