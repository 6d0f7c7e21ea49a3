// Package demo plays the whole system on real data, in one process: two
// embedded etcd v2 clusters (a master and a replica), the mirror between
// them, the gate in read-only mode in front of the replica, and an agent
// rendering the example confdir from the replica. A short scripted story
// shows what each piece does, printing the files it changes.
//
// It lives apart from the production binary's packages because it embeds
// an etcd server; cmd/confsync links it only when built with -tags demo.
package demo

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	confsync "github.com/confsync/confsync"
	"github.com/confsync/confsync/agent"
	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/gate"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/fixture"
	"github.com/confsync/confsync/internal/testpki"
	"github.com/confsync/confsync/mirror"
	"golang.org/x/crypto/bcrypt"
)

// Options shape a run.
type Options struct {
	// Out is where the agent writes the rendered files (default demo-out).
	Out string
	// ConfDir is the confdir to render; empty uses the example built into
	// the binary.
	ConfDir string
	// Keys is the approximate size of the generated conftool tree.
	Keys int
	// Keep leaves everything running after the story until ctx is done.
	Keep bool
	// Stdout receives the story.
	Stdout io.Writer
}

// outMarker marks an output directory as the demo's own, so that a later
// run may clear it without risking anyone else's files.
const outMarker = ".confsync-demo"

// Run plays the story. It returns when the story is over (or, with Keep,
// when ctx is done), having stopped everything it started.
func Run(ctx context.Context, opts Options) error {
	if opts.Out == "" {
		opts.Out = "demo-out"
	}
	if opts.Keys == 0 {
		opts.Keys = 2000
	}
	if opts.Stdout == nil {
		opts.Stdout = os.Stdout
	}
	d := &demo{opts: opts, start: time.Now(), out: opts.Stdout}
	defer d.close()
	if err := d.setUp(ctx); err != nil {
		return err
	}
	if err := d.story(ctx); err != nil {
		return err
	}
	if opts.Keep {
		d.printEndpoints()
		d.say("Everything keeps running; press Ctrl-C to stop.")
		<-ctx.Done()
	}
	d.say("Stopping everything.")
	return nil
}

type demo struct {
	opts  Options
	start time.Time
	out   io.Writer
	work  string // temporary directory: etcd data, certificates, state

	master, replica *etcdtest.Server
	pki             *testpki.PKI
	gate            *gate.Server
	gateURL         string
	gateMetrics     string
	mirror          *service
	mirrorStatus    func() mirror.Status
	agent           *service
	agentStatus     func() agent.Status
	confDir         string
	outDir          string
	closers         []func()
}

// service is a component running in its own goroutine, with its own HTTP
// endpoint for status and metrics.
type service struct {
	cancel context.CancelFunc
	done   chan error
	addr   string
	stop   func()
	once   sync.Once
	err    error
}

// shutdown stops the service and waits for it; calling it again is a no-op.
func (s *service) shutdown() error {
	if s == nil {
		return nil
	}
	s.once.Do(func() {
		s.cancel()
		s.err = <-s.done
		s.stop()
	})
	return s.err
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "[%6.2fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

func (d *demo) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
	if d.work != "" {
		os.RemoveAll(d.work)
	}
}

func (d *demo) onClose(f func()) { d.closers = append(d.closers, f) }

func (d *demo) setUp(ctx context.Context) error {
	var err error
	if d.work, err = os.MkdirTemp("", "confsync-demo-"); err != nil {
		return err
	}
	if err := d.prepareOut(); err != nil {
		return err
	}
	if err := d.prepareConfdir(); err != nil {
		return err
	}
	if d.pki, err = testpki.Write(d.work); err != nil {
		return err
	}
	d.say("Starting two etcd v2 clusters, as two datacenters would run them.")
	if d.master, err = etcdtest.Start(etcdtest.Options{Name: "master", Dir: filepath.Join(d.work, "master")}); err != nil {
		return err
	}
	d.onClose(d.master.Close)
	if d.replica, err = etcdtest.Start(etcdtest.Options{Name: "replica", Dir: filepath.Join(d.work, "replica")}); err != nil {
		return err
	}
	d.onClose(d.replica.Close)
	d.say("  master  %s (cluster %s)", d.master.URL(), d.master.ClusterID())
	d.say("  replica %s (cluster %s)", d.replica.URL(), d.replica.ClusterID())

	site := fixture.Generate(fixture.Options{Seed: 1, Keys: d.opts.Keys})
	if err := site.Load(ctx, d.master.Client()); err != nil {
		return fmt.Errorf("seed the master: %w", err)
	}
	d.say("Seeded the master with %d conftool keys under %s (pools, discovery, geodns, mediawiki-config).", len(site.Values), fixture.Prefix)

	seeded, err := d.master.Client().Get(ctx, "/", nil)
	if err != nil {
		return fmt.Errorf("read the master's index: %w", err)
	}
	if err := d.startMirror(); err != nil {
		return err
	}
	// The agent must start on the whole copy: started on part of it, it
	// would render partial files and the first step's diff would show
	// hosts that merely arrived late.
	if err := d.waitReplicated(ctx, seeded.Index); err != nil {
		return err
	}
	d.say("The mirror copied the whole master into the replica: applied through index %d, the master's (recorded in /__replication/__ROOT__ on the replica).", seeded.Index)
	if err := d.startGate(); err != nil {
		return err
	}
	d.say("The gate serves the replica read-only over TLS at %s.", d.gateURL)
	if err := d.startAgent(); err != nil {
		return err
	}
	if err := d.waitReady(ctx); err != nil {
		return err
	}
	files, _ := d.snapshot()
	d.say("The agent read the replica through the gate and rendered %d files into %s:", len(files), d.outDir)
	for _, f := range sortedKeys(files) {
		fmt.Fprintf(d.out, "           %s\n", f)
	}
	return nil
}

// prepareOut creates the output directory, clearing a previous run's.
func (d *demo) prepareOut() error {
	out, err := filepath.Abs(d.opts.Out)
	if err != nil {
		return err
	}
	d.outDir = out
	if entries, err := os.ReadDir(out); err == nil && len(entries) > 0 {
		if _, err := os.Stat(filepath.Join(out, outMarker)); err != nil {
			return fmt.Errorf("%s exists and is not a demo output directory; choose another -out", out)
		}
		if err := os.RemoveAll(out); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, outMarker), []byte("written by confsync demo; removed by its next run\n"), 0o644)
}

// prepareConfdir uses the given confdir, or unpacks the built-in example.
func (d *demo) prepareConfdir() error {
	if d.opts.ConfDir != "" {
		d.confDir = d.opts.ConfDir
		return nil
	}
	d.confDir = filepath.Join(d.work, "confdir")
	return fs.WalkDir(confsync.ExampleConfdir, ".", func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		target := filepath.Join(d.confDir, p)
		if e.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := confsync.ExampleConfdir.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
}

func listen() (net.Listener, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	return ln, ln.Addr().String(), nil
}

// serve runs handler on a new loopback port until stop is called.
func serve(handler http.Handler) (addr string, stop func(), err error) {
	ln, addr, err := listen()
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return addr, func() { srv.Close() }, nil
}

func (d *demo) startMirror() error {
	m, err := mirror.New(mirror.Config{
		Source:            etcd.Config{Endpoints: []string{d.master.URL()}},
		Destination:       etcd.Config{Endpoints: []string{d.replica.URL()}},
		SourcePrefix:      "/",
		DestinationPrefix: "/",
		Reload:            true,
		PollTimeout:       2 * time.Second,
		MaxBackoff:        time.Second,
	})
	if err != nil {
		return fmt.Errorf("mirror: %w", err)
	}
	addr, stop, err := serve(m.Handler())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &service{cancel: cancel, done: make(chan error, 1), addr: addr, stop: func() { stop(); m.Close() }}
	go func() { s.done <- m.Run(ctx) }()
	d.mirror, d.mirrorStatus = s, m.Status
	d.onClose(func() { s.shutdown() })
	d.say("Started the mirror master -> replica (whole keyspace, as the site runs it); metrics at http://%s/metrics, lag at http://%s/lag.", addr, addr)
	return nil
}

func (d *demo) startGate() error {
	htpasswd := filepath.Join(d.work, "htpasswd")
	hash, err := bcrypt.GenerateFromPassword([]byte("demo"), bcrypt.MinCost)
	if err != nil {
		return err
	}
	if err := os.WriteFile(htpasswd, []byte("root:"+string(hash)+"\nconftool:"+string(hash)+"\n"), 0o600); err != nil {
		return err
	}
	acl := filepath.Join(d.work, "acl.toml")
	if err := os.WriteFile(acl, []byte("admins = [\"root\"]\n[[acl]]\nprefix = \"/\"\nusers = [\"root\"]\n[[acl]]\nprefix = \"/conftool\"\nusers = [\"root\", \"conftool\"]\n"), 0o644); err != nil {
		return err
	}
	g, err := gate.New(gate.Config{
		Upstreams:    []string{d.replica.URL()},
		TLSCertFile:  d.pki.ServerCert,
		TLSKeyFile:   d.pki.ServerKey,
		HtpasswdFile: htpasswd,
		ACLFile:      acl,
		ReadOnly:     true,
	})
	if err != nil {
		return fmt.Errorf("gate: %w", err)
	}
	ln, addr, err := listen()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx, ln) }()
	d.gate, d.gateURL = g, "https://"+addr
	maddr, stopMetrics, err := serve(g.MetricsHandler())
	if err != nil {
		cancel()
		return err
	}
	d.gateMetrics = maddr
	d.onClose(func() { cancel(); <-done; stopMetrics() })
	return nil
}

func (d *demo) startAgent() error {
	src, err := etcd.New(context.Background(), etcd.Config{Endpoints: []string{d.gateURL}, CAFile: d.pki.CAFile})
	if err != nil {
		return err
	}
	a, err := agent.New(agent.Config{
		Load:        agent.LoadOptions{ConfDir: d.confDir, DestRoot: d.outDir},
		Source:      src,
		StateDir:    filepath.Join(d.work, "agent-state"),
		CacheSource: "etcd:" + d.gateURL,
		RetryMax:    2 * time.Second,
	})
	if err != nil {
		src.Close()
		return fmt.Errorf("agent: %w", err)
	}
	addr, stop, err := serve(a.Handler())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &service{cancel: cancel, done: make(chan error, 1), addr: addr, stop: func() { stop(); src.Close() }}
	go func() { s.done <- a.Run(ctx) }()
	d.agent = s
	d.agentStatus = a.Status
	d.onClose(func() { s.shutdown() })
	return nil
}
