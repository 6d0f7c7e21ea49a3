// Package testutil holds what many packages' tests need: waiting on a
// condition, a buffer several goroutines share, a TCP connection on
// loopback, and a DNS server on loopback.
package testutil

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// TCPPair is a loopback TCP connection: the accepted end, as a server
// holds it, and the client's. Both close when the test ends.
func TCPPair(tb testing.TB) (accepted *net.TCPConn, client net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Close() })
	nc, err := ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { nc.Close() })
	return nc.(*net.TCPConn), client
}

// Eventually polls cond until it holds, failing the test after a minute.
// The deadline is generous on purpose: tests run on loaded machines and
// measure behaviour, not speed.
func Eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// SyncBuffer is a bytes.Buffer that a writer and a reader may share.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// DNSRecords maps a question (fully qualified name and type) to answers.
type DNSRecords map[dnsmessage.Question][]dnsmessage.Resource

// StartDNS serves records over UDP on loopback until the test ends: a
// known name with no record of the asked type gets an empty answer, an
// unknown name NXDOMAIN. It returns a resolver that asks only this server.
func StartDNS(tb testing.TB, records DNSRecords) *net.Resolver {
	tb.Helper()
	known := map[string]bool{}
	for q := range records {
		known[q.Name.String()] = true
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			hdr, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			rcode := dnsmessage.RCodeSuccess
			if !known[q.Name.String()] {
				rcode = dnsmessage.RCodeNameError
			}
			msg := dnsmessage.Message{
				Header:    dnsmessage.Header{ID: hdr.ID, Response: true, Authoritative: true, RCode: rcode},
				Questions: []dnsmessage.Question{q},
				Answers:   records[q],
			}
			if out, err := msg.Pack(); err == nil {
				pc.WriteTo(out, from)
			}
		}
	}()
	return ResolverFor(pc.LocalAddr().String())
}

// ResolverFor is a resolver that asks only the DNS server at addr.
func ResolverFor(addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
}

// SRVRecord is an SRV answer for StartDNS.
func SRVRecord(name, target string, priority, weight, port uint16) dnsmessage.Resource {
	return dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Class: dnsmessage.ClassINET, TTL: 60},
		Body:   &dnsmessage.SRVResource{Priority: priority, Weight: weight, Port: port, Target: dnsmessage.MustNewName(target)},
	}
}
