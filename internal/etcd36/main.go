// Command etcd36 runs one etcd 3.6 member, which has no v2 API, for tests
// of confsync's v3 paths.
//
// It lives in a module of its own because a Go module holds one version of
// go.etcd.io/etcd/server/v3 and confsync's own is 3.5 (for the v2 API the
// site runs). internal/etcdtest builds it and starts it as a process.
//
// Its flags carry etcd's own names, so a test harness starts it exactly as
// it starts /usr/bin/etcd:
//
//	etcd36 --name m0 --data-dir /tmp/m0 \
//		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
//		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
//		--initial-cluster m0=http://127.0.0.1:2380 --initial-cluster-token t --initial-cluster-state new
//
// SIGTERM or SIGINT stops the member cleanly; it exits 0 then.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/version"
	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "etcd36:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cfg, err := parseConfig(args)
	if err != nil {
		return err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer e.Close()
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintf(os.Stderr, "etcd36: member %s ready, etcd %s\n", e.Server.MemberID(), version.Version)
	case <-time.After(5 * time.Minute):
		return errors.New("not ready within 5 minutes (no quorum?)")
	case sig := <-signals:
		fmt.Fprintf(os.Stderr, "etcd36: %s before ready, stopping\n", sig)
		return nil
	}
	select {
	case err := <-e.Err():
		return fmt.Errorf("etcd failed: %w", err)
	case <-e.Server.StopNotify():
		return errors.New("etcd stopped on its own")
	case sig := <-signals:
		fmt.Fprintf(os.Stderr, "etcd36: %s, stopping\n", sig)
		return nil
	}
}

// parseConfig reads etcd's flags, the subset a test cluster needs.
func parseConfig(args []string) (*embed.Config, error) {
	cfg := embed.NewConfig()
	fs := flag.NewFlagSet("etcd36", flag.ContinueOnError)
	fs.StringVar(&cfg.Name, "name", cfg.Name, "member name")
	fs.StringVar(&cfg.Dir, "data-dir", "", "data directory (required)")
	fs.Func("listen-client-urls", "comma-separated client URLs to listen on", urlList(&cfg.ListenClientUrls))
	fs.Func("advertise-client-urls", "comma-separated client URLs to advertise", urlList(&cfg.AdvertiseClientUrls))
	fs.Func("listen-peer-urls", "comma-separated peer URLs to listen on", urlList(&cfg.ListenPeerUrls))
	fs.Func("initial-advertise-peer-urls", "comma-separated peer URLs to advertise", urlList(&cfg.AdvertisePeerUrls))
	fs.StringVar(&cfg.InitialCluster, "initial-cluster", "", "name=peerURL,... of every member (default: this member alone)")
	fs.StringVar(&cfg.InitialClusterToken, "initial-cluster-token", cfg.InitialClusterToken, "token that makes the cluster ID unique")
	fs.StringVar(&cfg.ClusterState, "initial-cluster-state", cfg.ClusterState, "new or existing")
	fs.UintVar(&cfg.TickMs, "heartbeat-interval", cfg.TickMs, "heartbeat interval in milliseconds")
	fs.UintVar(&cfg.ElectionMs, "election-timeout", cfg.ElectionMs, "election timeout in milliseconds")
	fs.BoolVar(&cfg.UnsafeNoFsync, "unsafe-no-fsync", false, "skip fsync (tests only)")
	fs.StringVar(&cfg.LogLevel, "log-level", "warn", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if cfg.Dir == "" {
		return nil, errors.New("--data-dir is required")
	}
	if cfg.InitialCluster == "" {
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	}
	return cfg, nil
}

// urlList parses a comma-separated list of URLs into *dst.
func urlList(dst *[]url.URL) func(string) error {
	return func(s string) error {
		var urls []url.URL
		for _, part := range strings.Split(s, ",") {
			u, err := url.Parse(strings.TrimSpace(part))
			if err != nil {
				return err
			}
			if u.Scheme == "" || u.Host == "" {
				return fmt.Errorf("%q is not a URL like http://127.0.0.1:2379", part)
			}
			urls = append(urls, *u)
		}
		*dst = urls
		return nil
	}
}
