// Package etcdtest runs real etcd servers for tests, benchmarks and the
// demo, and plays the faults a real site has around them.
//
// Three kinds of etcd, all on free loopback ports with their own data:
//
//   - Server (New): one in-process etcd 3.5 member with the v2 API, a
//     single-member cluster of its own with a unique cluster ID, so several
//     servers in one process behave like independent clusters (a master and
//     a replica, say). It can be stopped and restarted on the same data and
//     ports, which is how tests play an etcd outage.
//   - Cluster (NewCluster): in-process etcd 3.5 members forming one
//     cluster, for leaders, failover, partitions and lagging followers.
//     Each member's peer traffic passes through a FaultProxy.
//   - ProcessCluster (NewProcessCluster, NewEtcd36): members as child
//     processes, Debian's etcd 3.4 by default or etcd 3.6 (no v2 API), for
//     SIGKILL, SIGSTOP and statistics that must be read from outside the
//     server (WatcherCount).
//
// FaultProxy puts latency, drops, resets, black holes, slow links and
// response buffering between any client and server; Proxy is an HTTP proxy
// that records what a client asks of etcd.
//
// In-process members log nothing unless ETCDTEST_LOG is set in the
// environment; process members write to a file per member (LogPath),
// whose end is shown when a test fails.
package etcdtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	client "go.etcd.io/etcd/client/v2"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Options tune a Server. The zero value is a plain-HTTP server that skips
// fsync (tests do not need durability across machine crashes, only across
// Stop and Restart, which a clean close provides).
type Options struct {
	// Dir holds the data. Empty means a new temporary directory, removed by Close.
	Dir string
	// TLS, when set, makes the client port speak HTTPS with these files.
	TLS *TLSFiles
	// Fsync keeps etcd's fsync calls (off by default for speed).
	Fsync bool
	// Name is the member name; it also seeds the cluster ID. Empty picks a random one.
	Name string
	// MaxRequestBytes raises etcd's limit on a request (1.5 MiB) for
	// values larger than it.
	MaxRequestBytes uint
}

// TLSFiles names PEM files for a server's client port.
type TLSFiles struct {
	CertFile, KeyFile string
	// ClientCAFile, when set, makes the server require client certificates signed by it.
	ClientCAFile string
}

// Server is one running (or stopped) etcd member.
type Server struct {
	opts      Options
	dir       string
	ownDir    bool
	clientURL url.URL // public, served by front
	innerURL  url.URL // etcd's own listener
	peerURL   url.URL // advertised to the other members
	// innerPeerURL is etcd's own peer listener: peerURL itself, unless
	// peerProxy stands in front of it (Cluster members).
	innerPeerURL url.URL
	peerProxy    *FaultProxy
	// initialCluster is name=peerURL,... of every member; empty for a
	// server that is a cluster of its own.
	initialCluster string
	// listening, when set, is called once etcd has bound its ports,
	// before it is ready.
	listening func()
	token     string
	mu        sync.Mutex
	etcd      *embed.Etcd
	front     *front
	// pendingFront holds the public port from Start until the first
	// Restart serves it.
	pendingFront net.Listener
}

// config is the embedded server's configuration for the current ports.
func (s *Server) config() *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name = s.opts.Name
	cfg.Dir = s.dir
	cfg.EnableV2 = true
	cfg.UnsafeNoFsync = !s.opts.Fsync
	if s.opts.MaxRequestBytes > 0 {
		cfg.MaxRequestBytes = s.opts.MaxRequestBytes
	}
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	cfg.InitialClusterToken = s.token
	cfg.ListenClientUrls = []url.URL{s.innerURL}
	cfg.AdvertiseClientUrls = []url.URL{s.clientURL}
	cfg.ListenPeerUrls = []url.URL{s.innerPeerURL}
	cfg.AdvertisePeerUrls = []url.URL{s.peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	if s.initialCluster != "" {
		// Members exchange heartbeats through proxies in a process that
		// may run under the race detector on a loaded machine: slower
		// ticks keep leadership from changing hands spuriously.
		cfg.TickMs = 50
		cfg.ElectionMs = 500
		cfg.InitialCluster = s.initialCluster
		cfg.PreVote = true // a partitioned member rejoins without deposing the leader
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	if os.Getenv("ETCDTEST_LOG") != "" {
		if lg, err := zap.NewDevelopment(); err == nil {
			cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg.With(zap.String("member", s.opts.Name)))
		}
	}
	if t := s.opts.TLS; t != nil {
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile:       t.CertFile,
			KeyFile:        t.KeyFile,
			TrustedCAFile:  t.ClientCAFile,
			ClientCertAuth: t.ClientCAFile != "",
		}
	}
	return cfg
}

// Start launches a new server and waits until it serves requests.
func Start(opts Options) (*Server, error) {
	s, err := newServer(opts)
	if err != nil {
		return nil, err
	}
	if err := s.Restart(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// newServer lays out a server (data directory, name, public ports)
// without starting it.
func newServer(opts Options) (*Server, error) {
	s := &Server{opts: opts, dir: opts.Dir}
	if s.dir == "" {
		dir, err := os.MkdirTemp("", "confsync-etcd-")
		if err != nil {
			return nil, err
		}
		s.dir, s.ownDir = dir, true
	}
	if s.opts.Name == "" {
		s.opts.Name = "etcd-" + randomHex(4)
	}
	s.token = s.opts.Name + "-" + randomHex(8)
	scheme := "http"
	if opts.TLS != nil {
		scheme = "https"
	}
	// The public port is taken by listening on it, so no other process can
	// grab it between choosing and using; etcd's own ports are internal.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.pendingFront = ln
	peerPort, err := freePort()
	if err != nil {
		ln.Close()
		return nil, err
	}
	s.clientURL = url.URL{Scheme: scheme, Host: ln.Addr().String()}
	s.peerURL = url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	s.innerPeerURL = s.peerURL
	return s, nil
}

// New starts a server for a test and closes it when the test ends.
func New(tb testing.TB, opts ...Options) *Server {
	tb.Helper()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	s, err := Start(o)
	if err != nil {
		tb.Fatalf("etcdtest: start etcd: %v", err)
	}
	tb.Cleanup(s.Close)
	return s
}

// Restart starts a stopped server again on the same data and ports.
// It is a no-op when the server is running.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd != nil {
		return nil
	}
	var e *embed.Etcd
	var err error
	// A port that was free a moment ago can be taken by the time etcd binds
	// it: pick another internal client port; the peer port is part of the
	// member's identity, so wait for it instead.
	// A member behind a peer proxy advertises the proxy, so its own peer
	// port is as free to change as its client port.
	for attempt := 0; attempt < 50; attempt++ {
		port, perr := freePort()
		if perr != nil {
			return perr
		}
		s.innerURL = url.URL{Scheme: s.clientURL.Scheme, Host: fmt.Sprintf("127.0.0.1:%d", port)}
		if s.peerProxy != nil {
			if port, perr = freePort(); perr != nil {
				return perr
			}
			s.innerPeerURL = url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", port)}
			s.peerProxy.SetTarget(s.innerPeerURL.Host)
		}
		e, err = embed.StartEtcd(s.config())
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
		if s.peerProxy == nil && strings.Contains(err.Error(), s.peerURL.Host) {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if err != nil {
		return fmt.Errorf("etcdtest: start etcd: %w", err)
	}
	if s.listening != nil {
		s.listening()
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return errors.New("etcdtest: etcd did not become ready within 60s")
	}
	var f *front
	if s.pendingFront != nil {
		f, s.pendingFront = serveFront(s.pendingFront, s.innerURL.Host), nil
	} else {
		f, err = listenFront(s.clientURL.Host, s.innerURL.Host)
	}
	if err != nil {
		e.Close()
		return fmt.Errorf("etcdtest: listen on %s: %w", s.clientURL.Host, err)
	}
	s.etcd, s.front = e, f
	return nil
}

// Stop shuts the server down, keeping its data for Restart. Its client
// connections are cut at once; a cluster member that leads hands over
// leadership first, as etcd does on SIGTERM.
func (s *Server) Stop() { s.shutdown(false, nil) }

// shutdown stops etcd. hard skips the leadership handover, as SIGKILL
// would (the caller has cut the peer traffic first). raftStopped, when
// set, is called once raft has stopped and before the listeners close:
// cutting the peer connections then spares the second etcd otherwise
// waits for raft streams that never go idle.
func (s *Server) shutdown(hard bool, raftStopped func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd == nil {
		return
	}
	s.front.close()
	switch {
	case hard:
		s.etcd.Server.HardStop()
	case raftStopped != nil:
		s.etcd.Server.Stop()
	}
	if raftStopped != nil {
		raftStopped()
	}
	s.etcd.Close()
	s.etcd, s.front = nil, nil
}

// Running reports whether the server is up.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.etcd != nil
}

// Close stops the server and removes a data directory it created.
func (s *Server) Close() {
	s.Stop()
	if s.pendingFront != nil {
		s.pendingFront.Close()
	}
	if s.peerProxy != nil {
		s.peerProxy.Close()
	}
	if s.ownDir {
		os.RemoveAll(s.dir)
	}
}

// URL is the client URL, for example http://127.0.0.1:41234.
func (s *Server) URL() string { return s.clientURL.String() }

// Addr is the client address, host:port.
func (s *Server) Addr() string { return s.clientURL.Host }

// Dir is the data directory.
func (s *Server) Dir() string { return s.dir }

// ClusterID is the cluster ID as etcd reports it in X-Etcd-Cluster-Id.
func (s *Server) ClusterID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd == nil {
		return ""
	}
	return s.etcd.Server.Cluster().ID().String()
}

// memberIDs are the member's ID, 0 when stopped, and the leader it knows
// of (itself when it leads, 0 when it knows none).
func (s *Server) memberIDs() (memberID, leaderID uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd == nil {
		return 0, 0
	}
	return uint64(s.etcd.Server.ID()), uint64(s.etcd.Server.Leader())
}

// Client is a v2 client for this server. Tests that talk TLS must pass a
// transport that trusts the server.
func (s *Server) Client(tr ...client.CancelableTransport) client.KeysAPI {
	var t client.CancelableTransport
	if len(tr) > 0 {
		t = tr[0]
	}
	return v2Client([]string{s.URL()}, t)
}

// Set writes a key, failing the test on error.
func (s *Server) Set(tb testing.TB, key, value string) *client.Response {
	tb.Helper()
	resp, err := s.Client().Set(context.Background(), key, value, nil)
	if err != nil {
		tb.Fatalf("etcdtest: set %s: %v", key, err)
	}
	return resp
}

// Delete removes a key or directory tree, failing the test on error.
func (s *Server) Delete(tb testing.TB, key string) *client.Response {
	tb.Helper()
	resp, err := s.Client().Delete(context.Background(), key, &client.DeleteOptions{Recursive: true})
	if err != nil {
		tb.Fatalf("etcdtest: delete %s: %v", key, err)
	}
	return resp
}

// Index is the current etcd index, read from X-Etcd-Index of a GET of /.
func (s *Server) Index(tb testing.TB) uint64 {
	tb.Helper()
	resp, err := s.Client().Get(context.Background(), "/", nil)
	if err != nil {
		tb.Fatalf("etcdtest: get /: %v", err)
	}
	return resp.Index
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
