// Package etcdv3 reads and follows subtrees of an etcd cluster through its
// v3 API, mapped onto the v2 model the rest of confsync works with, so that
// the same resources and templates render the same files from a v3 copy of
// a tree as from the v2 original: the step that lets a site move its
// consumers off the v2 API (gone in etcd 3.6) one at a time.
//
// A v3 keyspace is flat: keys are byte strings, a prefix is a range. A key
// is read as a v2 path: "/conftool/v1" covers itself and the keys below it
// by whole segments ("/conftool/v1/x", never "/conftool/v1x"); a key that
// is not a clean path (an empty segment, a trailing slash, "." or "..") has
// no place in a tree and is left out with a warning; and, as in v2, a key
// with a segment starting with "_" below the key read is hidden. A key may
// hold a value and have keys below it (see etcd.Event.Flat). Revisions
// serve as indexes: createdIndex is the key's create revision,
// modifiedIndex its mod revision, a listing's index the revision it was
// read at. Leases are not shown: a key attached to one has no expiration
// or TTL in the v2 view.
package etcdv3

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/etcd"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Client reads one etcd cluster through the v3 API. It is safe for
// concurrent use. Each reader (Fetch, every Feed) holds one gRPC connection
// to one member at a time and moves to the next endpoint when that member
// fails.
type Client struct {
	cfg       etcd.Config
	endpoints []string
	tls       *tls.Config
	logger    *slog.Logger
	fetch     *session
}

// New resolves the endpoints (SRV included) and builds a client from the
// same settings as the v2 client. Endpoints may also be given as bare
// host:port, as confd's etcdv3 backend takes them (https when TLS is
// configured). It does not contact etcd. A nil logger discards.
func New(ctx context.Context, cfg etcd.Config, logger *slog.Logger) (*Client, error) {
	tlsCfg, err := cfg.TLSConfig()
	if err != nil {
		return nil, err
	}
	scheme := "http://"
	if tlsCfg != nil {
		scheme = "https://"
	}
	eps := make([]string, 0, len(cfg.Endpoints))
	for _, ep := range cfg.Endpoints {
		if !strings.Contains(ep, "://") {
			ep = scheme + ep
		}
		eps = append(eps, ep)
	}
	cfg.Endpoints = eps
	if cfg.Endpoints, err = cfg.ResolveEndpoints(ctx); err != nil {
		return nil, err
	}
	if tlsCfg == nil {
		for _, ep := range cfg.Endpoints {
			if strings.HasPrefix(ep, "https://") {
				tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12} // system roots
				break
			}
		}
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, endpoints: cfg.Endpoints, tls: tlsCfg, logger: logger}
	c.fetch = c.newSession()
	return c, nil
}

// Endpoints are the URLs of the members, in the order they are tried.
func (c *Client) Endpoints() []string { return append([]string(nil), c.endpoints...) }

// Close ends Fetch's connection. Feeds close their own when they stop.
func (c *Client) Close() { c.fetch.close() }

// Fetch reads every key at or below root with one range read (paged for
// large subtrees, every page at the first page's revision). A root with
// nothing under it gives an empty tree at the revision read.
func (c *Client) Fetch(ctx context.Context, root string) (*backends.Snapshot, error) {
	return c.fetchAt(ctx, root, 0)
}

// Consistent returns a Source whose reads all see the cluster at one
// revision, the one its first read found: every root a render reads comes
// from the same moment, as a v2 read per root cannot promise. Use one per
// render.
func (c *Client) Consistent() backends.Source { return &pinned{c: c} }

// pinned is a Source pinned to the revision of its first read.
type pinned struct {
	c  *Client
	mu sync.Mutex // held by the first read until it knows its revision
	at int64
}

func (p *pinned) Fetch(ctx context.Context, root string) (*backends.Snapshot, error) {
	p.mu.Lock()
	if p.at == 0 {
		defer p.mu.Unlock()
		snap, err := p.c.fetchAt(ctx, root, 0)
		if err == nil {
			p.at = int64(snap.Index)
		}
		return snap, err
	}
	at := p.at
	p.mu.Unlock()
	return p.c.fetchAt(ctx, root, at)
}

// fetchAt reads root at revision at (0: the latest), trying each endpoint
// in turn.
func (c *Client) fetchAt(ctx context.Context, root string, at int64) (*backends.Snapshot, error) {
	root = backends.CleanKey(root)
	op := "read " + root
	var lastErr error
	for range c.endpoints {
		cli, ep, err := c.fetch.client()
		if err == nil {
			var r *rangeRead
			r, err = c.read(ctx, cli, root, at, !c.cfg.Quorum)
			switch {
			case err == nil:
				return c.snapshot(root, r), nil
			case errors.Is(err, rpctypes.ErrCompacted):
				return nil, fmt.Errorf("etcd v3 %s at %s: revision %d, which this run's reads share, was compacted meanwhile; run again: %w",
					op, ep, at, err)
			}
			c.fetch.failed(cli)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("etcd v3 %s at %s: %w", op, ep, err)
		}
		lastErr = fmt.Errorf("%s: %w", ep, err)
	}
	return nil, &etcd.UnreachableError{Endpoints: c.Endpoints(), Op: "v3 " + op, Err: lastErr}
}

// snapshot is the tree of a read's visible keys.
func (c *Client) snapshot(root string, r *rangeRead) *backends.Snapshot {
	var b backends.Builder
	var unclean []string
	for _, kv := range r.kvs {
		key := string(kv.Key)
		switch {
		case !clean(key):
			unclean = append(unclean, key)
		case visible(root, key):
			b.Set(key, string(kv.Value))
		}
	}
	warnUnclean(c.logger, root, unclean)
	return &backends.Snapshot{Root: root, Tree: b.Tree(), Index: uint64(r.rev),
		ClusterID: clusterIDOf(r.header), FetchedAt: time.Now()}
}

// pageSize bounds one range response, so that a large prefix costs etcd
// several modest answers rather than one huge one.
const pageSize = 5000

// rangeRead is every key of a range at one revision.
type rangeRead struct {
	kvs []*mvccpb.KeyValue
	// rev is the revision read at; the header of the first answer may be
	// later (it is the member's revision when it answered).
	rev    int64
	header *etcdserverpb.ResponseHeader
}

// read reads the keys in root's range at revision at (0: the latest),
// serializable (answered by the member alone) or linearizable (confirmed
// with the leader, never older than a write already acknowledged).
func (c *Client) read(ctx context.Context, kv clientv3.KV, root string, at int64, serializable bool) (*rangeRead, error) {
	start, end := keyRange(root)
	r := &rangeRead{rev: at}
	key := start
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize)}
		if at != 0 {
			opts = append(opts, clientv3.WithRev(at))
		}
		if serializable {
			opts = append(opts, clientv3.WithSerializable())
		}
		rctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
		resp, err := kv.Get(rctx, key, opts...)
		cancel()
		if err != nil {
			return nil, err
		}
		if r.header == nil {
			r.header = resp.Header
		}
		if r.rev == 0 {
			r.rev = resp.Header.Revision
		}
		at = r.rev
		r.kvs = append(r.kvs, resp.Kvs...)
		if !resp.More || len(resp.Kvs) == 0 {
			return r, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// keyRange is the range of keys that may lie at or below a clean key:
// from the key itself up to, not including, the key followed by "0", the
// byte after "/". It also holds siblings such as "/a-b" and "/a.b" for
// "/a", which visible leaves out.
func keyRange(root string) (start, end string) {
	if root == "/" {
		return "/", "0"
	}
	return root, root + "0"
}

// clean reports whether key is a path a tree can hold as it is.
func clean(key string) bool { return backends.CleanKey(key) == key }

// visible reports whether a clean key lies at or below root and is not
// hidden below it (a segment starting with "_"), as etcd's v2 API shows
// a subtree.
func visible(root, key string) bool {
	if !backends.Covers(root, key) {
		return false
	}
	rest := key[len(root):]
	if root == "/" {
		rest = key
	}
	return !strings.Contains(rest, "/_")
}

// warnUnclean logs the keys left out of a read of root because they are
// not clean paths, with a few examples.
func warnUnclean(logger *slog.Logger, root string, keys []string) {
	if len(keys) == 0 {
		return
	}
	examples := keys[:min(len(keys), 5)]
	logger.Warn("etcd v3 keys that are not clean paths (empty segment, trailing slash, . or ..) were left out: a tree cannot hold them; rename them",
		"under", root, "count", len(keys), "examples", fmt.Sprintf("%q", examples))
}

// clusterIDOf formats a response header's cluster ID as the v2 API's
// X-Etcd-Cluster-Id does, so one cluster has one ID whatever the API.
func clusterIDOf(h *etcdserverpb.ResponseHeader) string {
	if h == nil || h.ClusterId == 0 {
		return ""
	}
	return fmt.Sprintf("%x", h.ClusterId)
}

// session is one gRPC connection to one member at a time. A failure moves
// it to the next endpoint; the connection is made when first needed.
type session struct {
	c   *Client
	mu  sync.Mutex
	at  int // index into c.endpoints
	cli *clientv3.Client
}

func (c *Client) newSession() *session { return &session{c: c} }

// client returns the connection to the member in use, making it if needed.
func (s *session) client() (*clientv3.Client, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ep := s.c.endpoints[s.at]
	if s.cli != nil {
		return s.cli, ep, nil
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{ep},
		TLS:       s.c.tls,
		Username:  s.c.cfg.Username,
		Password:  s.c.cfg.Password,
		// Authenticating (with a user) waits for the member this long.
		DialTimeout: s.c.cfg.RequestTimeout,
		// Pings find a member that hangs with its connection open.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		// Requests fail over between endpoints here, not inside the client.
		MaxUnaryRetries: 2,
		Logger:          zap.NewNop(),
	})
	if err != nil {
		s.at = (s.at + 1) % len(s.c.endpoints)
		return nil, ep, fmt.Errorf("connect: %w", err)
	}
	s.cli = cli
	return cli, ep, nil
}

// endpoint is the member in use.
func (s *session) endpoint() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.endpoints[s.at]
}

// failed closes cli, if it is still the connection in use, and moves to
// the next endpoint.
func (s *session) failed(cli *clientv3.Client) {
	s.mu.Lock()
	if s.cli != cli || cli == nil {
		s.mu.Unlock()
		return
	}
	s.cli = nil
	s.at = (s.at + 1) % len(s.c.endpoints)
	s.mu.Unlock()
	cli.Close()
}

func (s *session) close() {
	s.mu.Lock()
	cli := s.cli
	s.cli = nil
	s.mu.Unlock()
	if cli != nil {
		cli.Close()
	}
}
