package gate

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Synopsis and Description are the manual of confsync gate, shown by -h
// and by confsync help gate.
const (
	Synopsis    = `confsync gate -listen HOST:PORT -upstream URL -tls-cert F -tls-key F [flags]`
	Description = `The gate is a TLS reverse proxy for etcd's v2 API that enforces per-prefix
write ACLs with HTTP basic auth and can be switched read-only at run time.
Run etcd on loopback without authentication and the gate on the public port.

Reads (GET, HEAD, OPTIONS) are open to anyone. A write to /v2/keys/K needs a
user the ACL allows for the longest prefix covering K (whole segments:
/conftool never covers /conftoolfoo). Writes anywhere else (/v2/auth,
/v2/members, the v3 gateway /v3/...) need a user listed in "admins".
Without credentials a write gets 401 with an etcd-style body (errorCode 110);
in read-only mode every write gets 403 (errorCode 107).

ACL file (TOML):

    admins = ["root"]        # may write /v2/auth/*, /v2/members, /v3/*
    [[acl]]
    prefix = "/"
    users = ["root"]
    [[acl]]
    prefix = "/conftool"
    users = ["root", "conftool"]
    [[acl]]
    prefix = "/eventlogging"
    anonymous = true         # writes need no credentials

Users come from an htpasswd file with bcrypt (htpasswd -B) or apr1
(htpasswd -m) hashes.

Read-only mode is on while -read-only is given, or while the -read-only-file
exists (touch it to stop writes, remove it to allow them; takes effect
within a second, open watches stay open). The ACL, htpasswd and certificate
files are reloaded when they change, and all of them on SIGHUP; a file that
fails to load keeps its previous version and the error is logged.

Responses to GET /v2/members and /v2/machines list the gate's own URL as
every member's client URL, so etcdctl and other clients that sync the member
list keep talking through the gate (-advertise-url sets that URL).

With -metrics-addr the gate serves its own /metrics (Prometheus), /healthz
(200 while serving) and /readyz (200 while an upstream etcd answers) there;
etcd's /metrics stays reachable through the gate itself. One JSON line per
request goes to -access-log.

Example:

    confsync gate -listen :4001 -upstream http://127.0.0.1:2379 \
        -tls-cert /etc/ssl/etcd.pem -tls-key /etc/ssl/etcd.key \
        -htpasswd /etc/confsync/gate.htpasswd -acl /etc/confsync/gate-acl.toml \
        -read-only-file /etc/confsync/gate-read-only -metrics-addr 127.0.0.1:9184
`
)

const usageText = "Usage: " + Synopsis + "\n\n" + Description + "\nFlags:\n"

// options are the parsed flags of `confsync gate`.
type options struct {
	listen, metricsAddr                             string
	upstreams                                       listFlag
	upstreamCA, upstreamCert, upstreamKey           string
	tlsCert, tlsKey                                 string
	insecurePlaintext                               bool
	htpasswd, acl                                   string
	readOnlyFile                                    string
	readOnly                                        bool
	advertiseURL                                    string
	maxBody                                         int64
	readHeaderTimeout, idleTimeout, shutdownTimeout time.Duration
	maxHeaderBytes                                  int
	logLevel, logFormat, accessLog                  string
}

// listFlag collects a flag given several times or as a comma-separated list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

// FlagSet returns the flags of `confsync gate`.
func FlagSet() *flag.FlagSet {
	fs, _ := newFlagSet()
	return fs
}

func newFlagSet() (*flag.FlagSet, *options) {
	o := &options{}
	fs := flag.NewFlagSet("gate", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", ":4001", "`HOST:PORT` to serve clients on")
	fs.Var(&o.upstreams, "upstream", "etcd client `URL` (http or https); repeat or comma-separate for failover, tried in order (default http://127.0.0.1:2379)")
	fs.StringVar(&o.upstreamCA, "upstream-ca", "", "CA `file` (PEM) to verify https upstreams (default: system roots)")
	fs.StringVar(&o.upstreamCert, "upstream-cert", "", "client certificate `file` (PEM) for https upstreams")
	fs.StringVar(&o.upstreamKey, "upstream-key", "", "key `file` (PEM) of -upstream-cert")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "certificate `file` (PEM, chain included) to serve TLS with")
	fs.StringVar(&o.tlsKey, "tls-key", "", "key `file` (PEM) of -tls-cert")
	fs.BoolVar(&o.insecurePlaintext, "insecure-plaintext", false, "serve plain HTTP without -tls-cert (passwords travel in clear; loopback tests only)")
	fs.StringVar(&o.htpasswd, "htpasswd", "", "htpasswd `file` with the users (bcrypt or apr1 hashes)")
	fs.StringVar(&o.acl, "acl", "", "ACL `file` (TOML, see above); without it every write is refused")
	fs.StringVar(&o.readOnlyFile, "read-only-file", "", "refuse writes while this `file` exists (its directory must exist)")
	fs.BoolVar(&o.readOnly, "read-only", false, "refuse every write, always (a replica's gate)")
	fs.StringVar(&o.advertiseURL, "advertise-url", "", "`URL` given as every member's client URL in /v2/members (default: https://<Host header of the request>)")
	fs.Int64Var(&o.maxBody, "max-body", DefaultMaxBodyBytes, "largest request body in `bytes`; larger gets 413")
	fs.DurationVar(&o.readHeaderTimeout, "read-header-timeout", DefaultReadHeaderTimeout, "time a client gets to send request headers")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", DefaultIdleTimeout, "how long an idle keep-alive client connection stays open")
	fs.IntVar(&o.maxHeaderBytes, "max-header-bytes", DefaultMaxHeaderBytes, "largest request header block in `bytes`")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", DefaultShutdownTimeout, "on SIGTERM, how long requests in flight get before connections (and watches) are cut")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "`HOST:PORT` to serve the gate's own /metrics, /healthz and /readyz on (default: off)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "log `format` on stderr: text or json")
	fs.StringVar(&o.accessLog, "access-log", "-", "where to write one JSON line per request (buffered, written out every second): a `file` (reopened on SIGHUP, for logrotate), - for stdout, or off")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageText)
		fs.PrintDefaults()
	}
	return fs, o
}

// Main runs `confsync gate` until ctx is cancelled. It returns 2 for usage
// and configuration errors, 1 when serving fails.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, o := newFlagSet()
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "confsync gate: unexpected argument %q (see confsync gate -help)\n", fs.Arg(0))
		return 2
	}
	log, err := newLogger(stderr, o.logLevel, o.logFormat)
	if err != nil {
		fmt.Fprintf(stderr, "confsync gate: %v\n", err)
		return 2
	}
	cfg, err := o.config()
	if err != nil {
		fmt.Fprintf(stderr, "confsync gate: %v\n", err)
		return 2
	}
	access, err := openAccessLog(o.accessLog, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "confsync gate: -access-log: %v\n", err)
		return 2
	}
	defer access.Close()
	cfg.Logger, cfg.AccessLog = log, access.logger()

	srv, err := New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "confsync gate: %v\n", err)
		return 2
	}

	// Take SIGHUP before listening, so a reload signal can never kill us.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		fmt.Fprintf(stderr, "confsync gate: -listen: %v\n", err)
		return 1
	}
	if o.metricsAddr != "" {
		stop, err := serveMetrics(o.metricsAddr, srv, log)
		if err != nil {
			ln.Close()
			fmt.Fprintf(stderr, "confsync gate: -metrics-addr: %v\n", err)
			return 1
		}
		defer stop()
	}
	go reloadOnHangup(ctx, hup, srv, access, log)
	log.Info("gate listening", "addr", ln.Addr().String(), "tls", cfg.TLSCertFile != "",
		"upstreams", strings.Join(cfg.Upstreams, ","), "read_only", srv.ReadOnly())
	if err := srv.Serve(ctx, ln); err != nil {
		log.Error("serve", "err", err)
		return 1
	}
	log.Info("gate stopped")
	return 0
}

// serveMetrics serves the gate's /metrics, /healthz and /readyz on addr.
func serveMetrics(addr string, srv *Server, log *slog.Logger) (stop func() error, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: srv.MetricsHandler(), ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	log.Info("serving metrics", "addr", ln.Addr().String())
	return hs.Close, nil
}

// reloadOnHangup reloads the configuration files and reopens the access
// log on each SIGHUP until ctx is done.
func reloadOnHangup(ctx context.Context, hup <-chan os.Signal, srv *Server, access *accessLog, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			log.Info("SIGHUP: reloading configuration files and reopening the access log")
			srv.Reload() // logs what failed
			if err := access.reopen(); err != nil {
				log.Error("reopen access log", "err", err)
			}
		}
	}
}

func (o *options) config() (Config, error) {
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return Config{}, errors.New("-tls-cert and -tls-key must be given together")
	}
	if o.tlsCert == "" && !o.insecurePlaintext {
		return Config{}, errors.New("-tls-cert and -tls-key are required (or -insecure-plaintext for loopback tests)")
	}
	if (o.upstreamCert == "") != (o.upstreamKey == "") {
		return Config{}, errors.New("-upstream-cert and -upstream-key must be given together")
	}
	if o.maxBody <= 0 || o.maxHeaderBytes <= 0 {
		return Config{}, errors.New("-max-body and -max-header-bytes must be positive")
	}
	upstreams := []string(o.upstreams)
	if len(upstreams) == 0 {
		upstreams = []string{"http://127.0.0.1:2379"}
	}
	return Config{
		Upstreams:         upstreams,
		UpstreamCAFile:    o.upstreamCA,
		UpstreamCertFile:  o.upstreamCert,
		UpstreamKeyFile:   o.upstreamKey,
		TLSCertFile:       o.tlsCert,
		TLSKeyFile:        o.tlsKey,
		HtpasswdFile:      o.htpasswd,
		ACLFile:           o.acl,
		ReadOnlyFile:      o.readOnlyFile,
		ReadOnly:          o.readOnly,
		AdvertiseURL:      o.advertiseURL,
		MaxBodyBytes:      o.maxBody,
		ReadHeaderTimeout: o.readHeaderTimeout,
		IdleTimeout:       o.idleTimeout,
		MaxHeaderBytes:    o.maxHeaderBytes,
		ShutdownTimeout:   o.shutdownTimeout,
	}, nil
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format %q: want text or json", format)
}
