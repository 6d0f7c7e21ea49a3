package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/env"
	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/etcdv3"
	"github.com/confsync/confsync/backends/file"
	"github.com/confsync/confsync/internal/cliconfig"
)

// defaultNode is where etcd listens unless told otherwise. (confd 0.16
// defaults to the legacy port 4001.)
const defaultNode = "http://127.0.0.1:2379"

// backendFlags are the confd flags that say where keys come from.
type backendFlags struct {
	backend        string
	nodes          cliconfig.Strings
	files          cliconfig.Strings
	filter         string
	basicAuth      bool
	username       string
	password       string
	clientCert     string
	clientKey      string
	clientCAKeys   string
	clientInsecure bool
	srvDomain      string
	srvRecord      string
	scheme         string
	quorum         bool
	timeout        time.Duration
}

func (b *backendFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&b.backend, "backend", "etcd", "where keys come from: etcd (its v2 API), etcdv3, file or env")
	fs.Var(&b.nodes, "node", "etcd client URL (repeatable, or comma-separated; default "+defaultNode+"); etcdv3 also takes HOST:PORT")
	fs.Var(&b.files, "file", "YAML or JSON file or directory for -backend file (repeatable)")
	fs.StringVar(&b.filter, "filter", "*", "file name glob for directories given to -file")
	fs.BoolVar(&b.basicAuth, "basic-auth", false, "send -username and -password to etcd with HTTP basic auth")
	fs.StringVar(&b.username, "username", "", "etcd user for -basic-auth")
	fs.StringVar(&b.password, "password", "", "etcd password for -basic-auth (prefer CONFSYNC_PASSWORD)")
	fs.StringVar(&b.clientCert, "client-cert", "", "TLS client certificate (PEM) for etcd")
	fs.StringVar(&b.clientKey, "client-key", "", "TLS client key (PEM) for etcd")
	fs.StringVar(&b.clientCAKeys, "client-ca-keys", "", "CA certificates (PEM) that sign etcd's server certificates")
	fs.BoolVar(&b.clientInsecure, "client-insecure", false, "do not verify etcd's server certificate (testing only)")
	fs.StringVar(&b.srvDomain, "srv-domain", "", "find etcd through the SRV record _etcd._tcp.<domain>")
	fs.StringVar(&b.srvRecord, "srv-record", "", "find etcd through this SRV record, e.g. _etcd-client-ssl._tcp.eqiad.wmnet")
	fs.StringVar(&b.scheme, "scheme", "http", "URL scheme for endpoints found by SRV: http or https")
	fs.BoolVar(&b.quorum, "quorum", false, "linearizable reads through raft (costs etcd more; confd always did this)")
	fs.DurationVar(&b.timeout, "timeout", 30*time.Second, "give up reading etcd after this long")
}

// configFileKeys maps confd.toml keys to flags, as confd spells them.
var configFileKeys = map[string]string{
	"backend": "backend", "nodes": "node", "prefix": "prefix", "confdir": "confdir",
	"interval": "interval", "log-level": "log-level", "noop": "noop", "sync-only": "sync-only",
	"watch": "watch", "scheme": "scheme", "srv_domain": "srv-domain", "srv_record": "srv-record",
	"client_cert": "client-cert", "client_key": "client-key", "client_cakeys": "client-ca-keys",
	"client_insecure": "client-insecure", "basic_auth": "basic-auth", "username": "username",
	"password": "password", "file": "file", "filter": "filter",
	// confsync's own settings, spelled like the flags.
	"quorum": "quorum", "keep-stage-file": "keep-stage-file", "state-dir": "state-dir",
	"metrics-addr": "metrics-addr", "wait": "wait", "resync-interval": "resync-interval",
	"watch-prefix": "watch-prefix", "watch-stream": "watch-stream",
}

var unsupportedFileKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"auth_token", "auth_type", "app_id", "user_id", "role_id", "secret_id", "table", "separator", "path"} {
		m[k] = "belongs to a backend confsync does not support (etcd, etcdv3, file and env are supported); remove it"
	}
	m["secret_keyring"] = "encrypted values (cget...) are not supported; remove it"
	return m
}()

func layers() cliconfig.Layers {
	return cliconfig.Layers{
		FileKeys:    configFileKeys,
		Unsupported: unsupportedFileKeys,
		EnvPrefixes: []string{"CONFSYNC_", "CONFD_"},
		EnvAliases:  map[string]string{"CONFD_CLIENT_CAKEYS": "client-ca-keys", "ETCDCTL_PEERS": "node"},
	}
}

// source builds the key source the flags describe.
func (b *backendFlags) source(ctx context.Context, logger *slog.Logger) (backends.Source, func(), error) {
	switch b.backend {
	case "file":
		if len(b.files) == 0 {
			return nil, nil, errors.New("-backend file needs at least one -file")
		}
		return &file.Source{Paths: b.files, Filter: b.filter}, func() {}, nil
	case "env":
		return &env.Source{}, func() {}, nil
	case "etcd":
		c, err := etcd.New(ctx, b.etcdConfig())
		if err != nil {
			return nil, nil, err
		}
		logger.Debug("etcd endpoints", "endpoints", strings.Join(c.Endpoints(), ","))
		return c, c.Close, nil
	case "etcdv3":
		c, err := etcdv3.New(ctx, b.etcdConfig(), logger)
		if err != nil {
			return nil, nil, err
		}
		logger.Debug("etcd v3 endpoints", "endpoints", strings.Join(c.Endpoints(), ","))
		return c, c.Close, nil
	default:
		return nil, nil, fmt.Errorf("-backend %q: confsync supports etcd, etcdv3, file and env", b.backend)
	}
}

func (b *backendFlags) etcdConfig() etcd.Config {
	cfg := etcd.Config{
		Endpoints: b.nodes, SRVDomain: b.srvDomain, SRVRecord: b.srvRecord, Scheme: b.scheme,
		CertFile: b.clientCert, KeyFile: b.clientKey, CAFile: b.clientCAKeys, Insecure: b.clientInsecure,
		Quorum: b.quorum,
	}
	if len(cfg.Endpoints) == 0 && cfg.SRVDomain == "" && cfg.SRVRecord == "" {
		cfg.Endpoints = []string{defaultNode}
	}
	if b.basicAuth || b.username != "" {
		cfg.Username, cfg.Password = b.username, b.password
	}
	return cfg
}

func (b *backendFlags) validate() error {
	if b.basicAuth && b.username == "" {
		return errors.New("-basic-auth needs -username")
	}
	if b.scheme != "http" && b.scheme != "https" {
		return fmt.Errorf("-scheme %q: want http or https", b.scheme)
	}
	if b.timeout <= 0 {
		return errors.New("-timeout must be positive")
	}
	return nil
}

func newLogger(w interface{ Write([]byte) (int, error) }, level string) (*slog.Logger, error) {
	var l slog.Level
	switch strings.ToLower(level) {
	case "", "info":
		l = slog.LevelInfo
	case "debug":
		l = slog.LevelDebug
	case "warn", "warning":
		l = slog.LevelWarn
	case "error", "fatal", "panic":
		l = slog.LevelError
	default:
		return nil, fmt.Errorf("-log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// cacheSource names the data source, so that a cache written while
// talking to another cluster, or to the same one through the other API (a
// v3 copy may differ from the v2 tree), is not used.
func (f *backendFlags) cacheSource() string {
	switch f.backend {
	case "etcd", "etcdv3":
		switch {
		case f.srvRecord != "":
			return f.backend + "-srv:" + f.srvRecord
		case f.srvDomain != "":
			return f.backend + "-srv-domain:" + f.srvDomain
		}
		return f.backend + ":" + strings.Join(f.etcdConfig().Endpoints, ",")
	case "file":
		return "file:" + strings.Join(f.files, ",")
	}
	return f.backend
}
