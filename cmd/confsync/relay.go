package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/confsync/confsync/internal/cliconfig"
	"github.com/confsync/confsync/internal/sdnotify"
	"github.com/confsync/confsync/relay"
)

func relayCommand() command {
	return command{
		name:        "relay",
		summary:     "serve etcd's v2 read API from one watch: any number of v2 clients, one etcd watcher",
		synopsis:    relaySynopsis,
		description: relayDescription,
		run:         runRelay,
		flags:       func() *flag.FlagSet { return relayFlagSet(&relayFlags{}) },
	}
}

const (
	relaySynopsis = `confsync relay -listen ADDR [-backend etcd|etcdv3] -node URL [-node URL ...] -prefix P [-cache FILE] [-history N]
              [-forward-writes] [-tls-cert F -tls-key F]
              [-client-ca-keys F -client-cert F -client-key F] [-metrics-addr ADDR] [-no-io-uring]`
	relayDescription = `Holds ONE watch of -prefix in etcd and serves the read side of etcd's v2
keys API from memory, so that v2 clients (pybal, MediaWiki, etcdctl,
python-etcd, confsync agents, scripts) point at the relay unchanged and etcd
sees one watcher however many of them wait.

From memory: GET of any key at or below -prefix (values, directories,
recursive, sorted, TTLs counted down, etcd's errors and indexes), and waits
(wait=true, with or without waitIndex, recursive, stream=true) on those
keys. A waitIndex inside the relay's history (the last -history events
under the prefix) is answered at once; an older one gets etcd's error 401,
so the client re-reads; a future one waits. HTTP/1.0 clients get answers
delimited by closing the connection, as pybal needs.

Passed to etcd: keys outside the prefix, hidden keys (a segment starting
with _), quorum=true reads and other paths. Writes are refused with 403 and
errorCode 107 (read-only), or passed to etcd unchanged with
-forward-writes. /version, /health (the relay's own), /v2/machines and
/v2/members (every client URL the relay's) are answered by the relay.

While etcd is away the relay keeps answering from its copy; every answer
carries X-Confsync-Data-Age (seconds since the data was last known
current, 0 while it is) and /health says stale. With -cache, the copy is
saved (the agent's last-known-good format) and a relay started while etcd
is down serves from it. When etcd returns, waiting clients get every change
made meanwhile from the relay's history, or, where events were missed, end
their wait and meet a 401 on asking again, so they re-read: never a silent
gap.

With -backend etcdv3 the prefix is followed through etcd's v3 API (etcd
3.6 has no v2): revisions serve as indexes, directories are derived from
key paths, leases show no TTL, and nothing is passed to etcd (docs/relay.md
lists what cannot be the same).

-metrics-addr serves /metrics, /health and /status on a separate address; the client
listener serves /metrics too. SIGTERM ends every watch (an empty answer, as
etcd gives when it stops) and exits 0.

Exit status: 0 stopped by SIGTERM/SIGINT; 1 the relay could not start (a
certificate or the listen address) or its listener failed; 2 bad flags.`
)

// relayFlags are the command's flags: its own and the agent's flags for
// reaching etcd.
type relayFlags struct {
	backendFlags
	listen, prefix, cache string
	history               int
	forwardWrites         bool
	noIOURing             bool
	tlsCert, tlsKey       string
	metricsAddr           string
	logLevel              string
}

// relayUpstreamFlags are the backend flags that say how to reach etcd; the
// others (-backend, -file, ...) do not apply to a relay.
var relayUpstreamFlags = []string{"backend", "node", "basic-auth", "username", "password", "client-cert", "client-key",
	"client-ca-keys", "client-insecure", "srv-domain", "srv-record", "scheme"}

func relayFlagSet(f *relayFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	all := flag.NewFlagSet("", flag.ContinueOnError)
	f.backendFlags.register(all)
	for _, name := range relayUpstreamFlags {
		fl := all.Lookup(name)
		usage := fl.Usage
		if name == "backend" {
			usage = "the etcd API followed: etcd (v2) or etcdv3 (v2 clients served from a v3 keyspace, as etcd 3.6 has no v2)"
		}
		fs.Var(fl.Value, fl.Name, usage)
	}
	fs.StringVar(&f.listen, "listen", "", "HOST:PORT to serve v2 clients on (required)")
	fs.StringVar(&f.prefix, "prefix", "", "the key whose subtree is served from memory, e.g. /conftool/v1 (required)")
	fs.StringVar(&f.cache, "cache", "", "file keeping the last copy, served when the relay starts while etcd is down")
	fs.IntVar(&f.history, "history", relay.DefaultHistory, "events under the prefix kept for clients that resume a watch")
	fs.BoolVar(&f.forwardWrites, "forward-writes", false, "pass writes to etcd unchanged instead of refusing them with 403")
	fs.BoolVar(&f.noIOURing, "no-io-uring", false, "write each event to each waiting client with a system call of its own, not up to 128 per call through io_uring (the same happens where io_uring is refused)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "certificate (PEM, chain included) to serve HTTPS with")
	fs.StringVar(&f.tlsKey, "tls-key", "", "key (PEM) of -tls-cert")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "HOST:PORT serving /metrics, /health and /status apart from the client listener")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	return fs
}

func (f *relayFlags) validate() error {
	switch {
	case f.listen == "":
		return errors.New("-listen is required, e.g. -listen :2379")
	case f.prefix == "" || !strings.HasPrefix(f.prefix, "/"):
		return fmt.Errorf("-prefix %q: want an absolute key such as /conftool/v1", f.prefix)
	case f.history < 1:
		return fmt.Errorf("-history %d: keep at least one event (etcd keeps 1000)", f.history)
	case (f.tlsCert == "") != (f.tlsKey == ""):
		return errors.New("-tls-cert and -tls-key go together")
	case f.backend != "etcd" && f.backend != "etcdv3":
		return fmt.Errorf("-backend %q: a relay follows etcd, through its v2 API (etcd) or its v3 API (etcdv3)", f.backend)
	}
	return f.backendFlags.validate()
}

func runRelay(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var f relayFlags
	fs := relayFlagSet(&f)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, commandHelp("relay")) }
	if err := fs.Parse(args); err != nil {
		return usageError(stderr, "relay", err)
	}
	if fs.NArg() > 0 {
		return usageError(stderr, "relay", fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	env := cliconfig.Layers{EnvPrefixes: []string{"CONFSYNC_"}}
	if err := env.Apply(fs, ""); err != nil {
		return usageError(stderr, "relay", err)
	}
	if err := f.validate(); err != nil {
		return usageError(stderr, "relay", err)
	}
	logger, err := newLogger(stderr, f.logLevel)
	if err != nil {
		return usageError(stderr, "relay", err)
	}
	err = relay.Run(ctx, relay.RunConfig{
		Config:      relay.Config{History: f.history, ForwardWrites: f.forwardWrites, NoIOURing: f.noIOURing, Logger: logger},
		Etcd:        f.etcdConfig(),
		V3:          f.backend == "etcdv3",
		Prefix:      f.prefix,
		Listen:      f.listen,
		TLSCertFile: f.tlsCert,
		TLSKeyFile:  f.tlsKey,
		MetricsAddr: f.metricsAddr,
		CacheFile:   f.cache,
		CacheSource: f.cacheSource(),
		Notifier:    sdnotify.New(),
	})
	if err != nil {
		fmt.Fprintf(stderr, "confsync relay: %v\n", err)
		return 1
	}
	return 0
}
