package gate_test

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawRequest renders a request exactly as given: method and target are not
// cleaned or validated by any client library.
func rawRequest(method, target, user, body string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n", method, target)
	if user != "" {
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + passwords[user]))
		fmt.Fprintf(&b, "Authorization: Basic %s\r\n", auth)
	}
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	if body != "" {
		fmt.Fprintf(&b, "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n" + body)
	return b.String()
}

// TestBypassAttemptsAreDenied tries every spelling that could make the gate
// judge one key while etcd writes another. conftool may write /conftool
// only; anonymous clients may write /eventlogging only. None of these may
// create anything under /spicerack (or /conftool, for the anonymous ones).
func TestBypassAttemptsAreDenied(t *testing.T) {
	h := newHarness(t)
	value := "value=pwned"
	cases := []struct {
		name, method, target, user string
		headers                    []string
		want                       int
	}{
		{"dot-dot segment", "PUT", "/v2/keys/conftool/../spicerack/b", "conftool", nil, 307},
		{"dot and dot-dot", "PUT", "/v2/keys/conftool/./../spicerack/b", "conftool", nil, 307},
		{"leading double slash", "PUT", "//v2/keys/spicerack/b", "conftool", nil, 307},
		{"inner double slash", "PUT", "/v2/keys//spicerack/b", "conftool", nil, 307},
		{"encoded slashes %2F", "PUT", "/v2/keys/conftool%2F..%2Fspicerack/b", "conftool", nil, 307},
		{"encoded slashes %2f", "PUT", "/v2/keys/conftool%2f..%2fspicerack/b", "conftool", nil, 307},
		{"encoded slash, plain dots", "PUT", "/v2/keys/conftool/..%2Fspicerack/b", "conftool", nil, 307},
		{"encoded dots %2E%2E", "PUT", "/v2/keys/conftool/%2E%2E/spicerack/b", "conftool", nil, 307},
		{"encoded dots %2e%2e", "PUT", "/v2/keys/conftool/%2e%2e/spicerack/b", "conftool", nil, 307},
		{"encoded slash in the prefix", "PUT", "/v2%2Fkeys/spicerack/b", "conftool", nil, 307},
		{"trailing dot segment", "PUT", "/v2/keys/spicerack/b/.", "conftool", nil, 307},
		{"anonymous dot-dot out of eventlogging", "PUT", "/v2/keys/eventlogging/../spicerack/b", "", nil, 307},
		{"anonymous dot-dot into conftool", "PUT", "/v2/keys/eventlogging/../conftool/b", "", nil, 307},
		{"X-HTTP-Method-Override on GET", "GET", "/v2/keys/spicerack/b?value=pwned", "conftool", []string{"X-HTTP-Method-Override: PUT"}, 401},
		{"X-HTTP-Method on GET", "GET", "/v2/keys/conftool/b?value=pwned", "", []string{"X-HTTP-Method: PUT"}, 401},
		{"X-Method-Override on HEAD", "HEAD", "/v2/keys/conftool/b", "", []string{"X-Method-Override: DELETE"}, 401},
		{"lowercase put", "put", "/v2/keys/spicerack/b", "conftool", nil, 401},
		{"lowercase put, anonymous", "put", "/v2/keys/conftool/b", "", nil, 401},
		{"mixed-case Put", "Put", "/v2/keys/spicerack/b", "conftool", nil, 401},
		{"lowercase get is not a read", "get", "/v2/keys/conftool/b?value=pwned", "", nil, 401},
		{"TRACE", "TRACE", "/v2/keys/spicerack/b", "conftool", nil, 401},
		{"absolute-form target", "PUT", "https://127.0.0.1/v2/keys/spicerack/b", "conftool", nil, 401},
		{"conftoolfoo is not conftool", "PUT", "/v2/keys/conftoolfoo/b", "conftool", nil, 401},
		{"v3 put as conftool", "POST", "/v3/kv/put", "conftool", nil, 401},
		{"websocket upgrade to the v3 gateway", "GET", "/v3/kv/put", "", []string{
			"Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="}, 401},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := value
			if c.method == "GET" || c.method == "HEAD" || c.method == "get" {
				body = ""
			}
			got := h.raw(rawRequest(c.method, c.target, c.user, body, c.headers...))
			if got.status != c.want {
				t.Fatalf("%s %s: %d %q, want %d", c.method, c.target, got.status, got.body, c.want)
			}
			if c.want == http.StatusTemporaryRedirect {
				loc := got.header.Get("Location")
				if strings.Contains(loc, "..") || strings.Contains(loc, "//") || strings.Contains(strings.ToLower(loc), "%2f") {
					t.Errorf("redirect to an unclean path %q", loc)
				}
				// A client following the redirect is judged on the clean path.
				again := h.raw(rawRequest(c.method, loc, c.user, body, c.headers...))
				if again.status != http.StatusUnauthorized {
					t.Errorf("following %s to %s: %d %s, want 401", c.target, loc, again.status, again.body)
				}
			}
		})
	}
	for _, key := range []string{"/spicerack", "/conftool/b", "/conftoolfoo"} {
		if v, exists := h.etcdValue(key); exists {
			t.Errorf("a bypass attempt reached etcd: %s = %s", key, v)
		}
	}
	// The same user writing where the ACL allows, spelled cleanly, works.
	if got := h.raw(rawRequest("PUT", "/v2/keys/conftool/b", "conftool", value)); got.status != 201 {
		t.Errorf("clean PUT as conftool: %d %s", got.status, got.body)
	}
}

// TestEtcdActsOnUncleanPathsDirectly shows why the gate must decide on the
// path as etcd interprets it: sent straight to etcd, these spellings write
// a key other than the one they seem to name (or redirect a following
// client there).
func TestEtcdActsOnUncleanPathsDirectly(t *testing.T) {
	h := newHarness(t)
	for _, target := range []string{
		"/v2/keys/conftool%2F..%2Fspicerack/direct1",
		"/v2/keys/conftool/../spicerack/direct2",
	} {
		conn, err := net.Dial("tcp", h.etcd.Addr())
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(conn, rawRequest("PUT", target, "", "value=x"))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		conn.Close()
		t.Logf("direct to etcd: PUT %s -> %s Location=%q %s", target, resp.Status, resp.Header.Get("Location"), strings.TrimSpace(string(b)))
		switch resp.StatusCode {
		case http.StatusMovedPermanently, http.StatusTemporaryRedirect:
			if !strings.Contains(resp.Header.Get("Location"), "/v2/keys/spicerack/") {
				t.Errorf("etcd redirected %s to %s", target, resp.Header.Get("Location"))
			}
		case http.StatusCreated:
			if !strings.Contains(string(b), `"key":"/spicerack/`) {
				t.Errorf("etcd wrote %s", b)
			}
		default:
			t.Errorf("etcd answered %s", resp.Status)
		}
	}
}
