package mirror

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// newV3Client builds a gRPC client for one cluster. Like the v2 client it
// does not contact etcd: the first request does, and failures are retried
// by the caller. The client spreads requests over the endpoints and moves
// off one that stops answering (keepalive pings find a hung member).
func newV3Client(cfg etcd.Config) (*clientv3.Client, error) {
	eps, err := cfg.ResolveEndpoints(context.Background())
	if err != nil {
		return nil, err
	}
	tlsCfg, err := cfg.TLSConfig()
	if err != nil {
		return nil, err
	}
	if tlsCfg == nil {
		for _, ep := range eps {
			if strings.HasPrefix(ep, "https://") {
				tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
				break
			}
		}
	}
	return clientv3.New(clientv3.Config{
		Endpoints:            eps,
		TLS:                  tlsCfg,
		Username:             cfg.Username,
		Password:             cfg.Password,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Logger:               zap.NewNop(),
	})
}

// clusterIDOf formats a v3 header's cluster ID as v2's X-Etcd-Cluster-Id
// does, so that one cluster has one ID whatever the API.
func clusterIDOf(h *etcdserverpb.ResponseHeader) string {
	if h == nil || h.ClusterId == 0 {
		return ""
	}
	return fmt.Sprintf("%x", h.ClusterId)
}

// v3Side is one cluster reached through the v3 API.
type v3Side struct {
	cli     *clientv3.Client
	timeout time.Duration

	mu      sync.Mutex
	cluster string // last cluster ID seen in a response header
}

func newV3Side(cfg etcd.Config) (*v3Side, error) {
	cli, err := newV3Client(cfg)
	if err != nil {
		return nil, err
	}
	timeout := cfg.RequestTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	return &v3Side{cli: cli, timeout: timeout}, nil
}

// call bounds one request, so that a member that hangs costs one timeout
// and the retry goes elsewhere.
func (s *v3Side) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

func (s *v3Side) saw(h *etcdserverpb.ResponseHeader) {
	if id := clusterIDOf(h); id != "" {
		s.mu.Lock()
		s.cluster = id
		s.mu.Unlock()
	}
}

func (s *v3Side) clusterID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cluster
}

// head reads the current revision and cluster ID with a linearizable
// request: a lagging member cannot answer it with an old revision.
func (s *v3Side) head(ctx context.Context, key string) (uint64, string, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, key, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, "", fmt.Errorf("read the revision: %w", err)
	}
	s.saw(resp.Header)
	return uint64(resp.Header.Revision), clusterIDOf(resp.Header), nil
}

// readTree3 reads every key at or below root (path boundaries: /a does not
// hold /ab) in one linearizable range read, a consistent state at its
// header revision.
func readTree3(ctx context.Context, s *v3Side, root string) (*flatTree, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, root, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read %s and below: %w", root, err)
	}
	s.saw(resp.Header)
	t := &flatTree{nodes: map[string]nodeState{}, children: map[string]int{},
		index: uint64(resp.Header.Revision), clusterID: clusterIDOf(resp.Header)}
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		if under(root, key) {
			t.nodes[key] = nodeState{exists: true, value: string(kv.Value), modIndex: uint64(kv.ModRevision)}
		}
	}
	return t, nil
}
