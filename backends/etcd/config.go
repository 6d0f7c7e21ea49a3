// Package etcd reads and watches subtrees of an etcd cluster through its v2
// API. One recursive GET reads a whole root at one X-Etcd-Index; a Poller
// long-polls a root from an index and also reports how far etcd has proved a
// quiet root to be quiet, which lets a watcher in a busy cluster keep its
// resume index inside etcd's 1000-event history.
package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Config says how to reach an etcd cluster.
type Config struct {
	// Endpoints are client URLs such as https://conf1007.eqiad.wmnet:2379.
	// Requests go to one endpoint and fail over to the others.
	Endpoints []string
	// SRVRecord is a full SRV name (_etcd-client-ssl._tcp.eqiad.wmnet) whose
	// targets become the endpoints; SRVDomain is the confd form, which looks
	// up _etcd._tcp.<domain>. Scheme (default http) is put in front of each
	// target.
	SRVRecord, SRVDomain, Scheme string
	// Resolver performs the SRV lookup; nil means the system resolver.
	Resolver *net.Resolver

	// CertFile and KeyFile are a client certificate; CAFile verifies the
	// servers instead of the system roots. Insecure skips verification.
	CertFile, KeyFile, CAFile string
	Insecure                  bool

	// Username and Password enable HTTP basic authentication.
	Username, Password string

	// Quorum makes reads linearizable (they go through raft) instead of being
	// answered from the local member's state.
	Quorum bool

	// RequestTimeout bounds the wait for response headers of a non-watch
	// request on one endpoint before trying the next (default 10s).
	RequestTimeout time.Duration
}

// ResolveEndpoints returns the configured endpoints, looking them up by SRV
// when a record or domain is set. Endpoints are validated as http(s) URLs.
func (c Config) ResolveEndpoints(ctx context.Context) ([]string, error) {
	eps := c.Endpoints
	if c.SRVRecord != "" || c.SRVDomain != "" {
		var err error
		if eps, err = c.lookupSRV(ctx); err != nil {
			return nil, err
		}
	}
	if len(eps) == 0 {
		return nil, errors.New("no etcd endpoints: give -node URL (repeatable) or -srv-domain/-srv-record")
	}
	out := make([]string, 0, len(eps))
	for _, ep := range eps {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("etcd endpoint %q: want a URL like http://127.0.0.1:2379", ep)
		}
		out = append(out, strings.TrimRight(ep, "/"))
	}
	return out, nil
}

func (c Config) lookupSRV(ctx context.Context) ([]string, error) {
	record := c.SRVRecord
	if record == "" {
		record = "_etcd._tcp." + strings.TrimSuffix(c.SRVDomain, ".")
	}
	scheme := c.Scheme
	if scheme == "" {
		scheme = "http"
	}
	if scheme != "http" && scheme != "https" {
		return nil, fmt.Errorf("-scheme %q: want http or https", scheme)
	}
	resolver := c.Resolver
	if resolver == nil {
		resolver = net.DefaultResolver
	}
	_, srvs, err := resolver.LookupSRV(ctx, "", "", record)
	if err != nil {
		return nil, fmt.Errorf("look up etcd endpoints in SRV record %s: %w", record, err)
	}
	// Lower priority first, then higher weight, then name: a stable order
	// puts the preferred members first for failover.
	sort.SliceStable(srvs, func(i, j int) bool {
		if srvs[i].Priority != srvs[j].Priority {
			return srvs[i].Priority < srvs[j].Priority
		}
		if srvs[i].Weight != srvs[j].Weight {
			return srvs[i].Weight > srvs[j].Weight
		}
		return srvs[i].Target < srvs[j].Target
	})
	eps := make([]string, 0, len(srvs))
	for _, s := range srvs {
		host := strings.TrimSuffix(s.Target, ".")
		eps = append(eps, scheme+"://"+net.JoinHostPort(host, strconv.Itoa(int(s.Port))))
	}
	if len(eps) == 0 {
		return nil, fmt.Errorf("SRV record %s has no targets", record)
	}
	return eps, nil
}

// TLSConfig builds the client TLS settings, or nil when none are configured.
func (c Config) TLSConfig() (*tls.Config, error) {
	if c.CertFile == "" && c.KeyFile == "" && c.CAFile == "" && !c.Insecure {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.Insecure}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, errors.New("client certificate and key must be given together")
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load client certificate %s with key %s: %w", c.CertFile, c.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate found", c.CAFile)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// Transport builds the HTTP transport every request to this cluster shares.
// Idle connections are kept so that a watch loop does not pay a TLS
// handshake per event.
func (c Config) Transport() (*http.Transport, error) {
	tlsCfg, err := c.TLSConfig()
	if err != nil {
		return nil, err
	}
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		TLSClientConfig:     tlsCfg,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     90 * time.Second,
	}, nil
}
