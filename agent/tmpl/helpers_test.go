package tmpl

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// fixedNow is the clock of testEnv.
var fixedNow = time.Date(2024, 10, 24, 12, 30, 5, 0, time.UTC)

// testEnv is a deterministic Env: a fixed clock, hostname and environment
// (EMPTY is set to the empty string), and a resolver that nothing answers.
func testEnv(t *testing.T) Env {
	vars := map[string]string{"DC": "eqiad", "EMPTY": ""}
	return Env{
		Getenv:        func(k string) string { return vars[k] },
		Hostname:      func() (string, error) { return "lvs1017.eqiad.wmnet", nil },
		Now:           func() time.Time { return fixedNow },
		Resolver:      deadResolver(t),
		LookupTimeout: 2 * time.Second,
	}
}

// render parses and executes text in one go.
func render(t *testing.T, env Env, store *Store, text string) (string, error) {
	t.Helper()
	tp, err := Parse("test.tmpl", text, env)
	if err != nil {
		return "", err
	}
	var sb strings.Builder
	err = tp.Execute(&sb, store)
	return sb.String(), err
}

// dnsRecords maps a question (fully qualified name and type) to answers.
type dnsRecords map[dnsmessage.Question][]dnsmessage.Resource

func question(name string, typ dnsmessage.Type) dnsmessage.Question {
	return dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}
}

func aRecord(name string, ip string) dnsmessage.Resource {
	var a [4]byte
	copy(a[:], net.ParseIP(ip).To4())
	return dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Class: dnsmessage.ClassINET, TTL: 60},
		Body:   &dnsmessage.AResource{A: a},
	}
}

func aaaaRecord(name string, ip string) dnsmessage.Resource {
	var a [16]byte
	copy(a[:], net.ParseIP(ip).To16())
	return dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Class: dnsmessage.ClassINET, TTL: 60},
		Body:   &dnsmessage.AAAAResource{AAAA: a},
	}
}

func srvRecord(name, target string, prio, weight, port uint16) dnsmessage.Resource {
	return dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Class: dnsmessage.ClassINET, TTL: 60},
		Body:   &dnsmessage.SRVResource{Priority: prio, Weight: weight, Port: port, Target: dnsmessage.MustNewName(target)},
	}
}

// startDNS serves records over UDP on loopback: a known name with no record
// of the asked type gets an empty answer, an unknown name NXDOMAIN. It
// returns a resolver that asks only this server.
func startDNS(t *testing.T, records dnsRecords) *net.Resolver {
	t.Helper()
	known := map[string]bool{}
	for q := range records {
		known[q.Name.String()] = true
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
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
			out, err := msg.Pack()
			if err != nil {
				continue
			}
			pc.WriteTo(out, from)
		}
	}()
	return resolverFor(pc.LocalAddr().String())
}

// deadResolver asks a UDP port on which nothing answers.
func deadResolver(t *testing.T) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() }) // kept open and silent: queries time out
	return resolverFor(pc.LocalAddr().String())
}

func resolverFor(addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
}
