package gate

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"github.com/confsync/confsync/backends/etcd"
)

// serverTLSConfig is TLS 1.2 and later with forward-secret AEAD suites only
// (TLS 1.3 suites are not configurable and are all modern). ALPN lists
// http/1.0 besides http/1.1: a client offering only http/1.0 (`curl -0`)
// is otherwise refused by Go's TLS stack with "no application protocol".
// h2 is not offered: every client of etcd v2 speaks HTTP/1.x, and keeping
// one protocol keeps long polls and close-delimited bodies simple.
func serverTLSConfig(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		NextProtos:     []string{"http/1.1", "http/1.0"},
		GetCertificate: getCert,
	}
}

// loadKeyPair loads a certificate and its key and parses the leaf, naming
// both files in errors.
func loadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("certificate %s with key %s: %w", certFile, keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("certificate %s: %w", certFile, err)
		}
	}
	return &cert, nil
}

// upstreamTLS holds the files for TLS to an https upstream.
type upstreamTLS struct {
	caFile, certFile, keyFile string
}

func (u upstreamTLS) config() (*tls.Config, error) {
	cfg, err := etcd.Config{CAFile: u.caFile, CertFile: u.certFile, KeyFile: u.keyFile}.TLSConfig()
	if err != nil {
		return nil, fmt.Errorf("upstream %w", err)
	}
	if cfg == nil {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return cfg, nil
}
