package tmpl

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/testutil"
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

// deadResolver asks a UDP port on which nothing answers.
func deadResolver(t *testing.T) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() }) // kept open and silent: queries time out
	return testutil.ResolverFor(pc.LocalAddr().String())
}
