package gate

import (
	"net/http"
	"net/url"
	"path"
	"strings"
)

// keysPrefix is where etcd v2 serves its keyspace.
const keysPrefix = "/v2/keys"

// Bodies etcd-shaped like the nginx proxy's error pages, so clients that
// parse etcd errors keep working. No trailing newline, as nginx served them.
const (
	bodyUnauthorized = `{"errorCode":110,"message":"The request requires user authentication","cause":"Insufficient credentials","index":0}`
	bodyReadOnly     = `{"errorCode":107,"message":"This cluster is in read-only mode","cause":"Cluster configured to be read-only","index":0}`
)

// methodOverrideHeaders are the headers some HTTP stacks honour to turn a
// request into another method. etcd does not, but etcd's v3 gateway is a
// third-party router, and a gate must not depend on who honours what: a
// request carrying one is judged as the method it asks for.
var methodOverrideHeaders = []string{"X-Http-Method-Override", "X-Http-Method", "X-Method-Override"}

// isReadMethod reports whether m reads. HTTP methods are case-sensitive, and
// only these exact spellings are reads; "get" or "Get" is judged a write, so
// a server that folds case cannot be used to slip a write past the gate.
func isReadMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// isWrite reports whether r may change anything upstream: any method but
// GET, HEAD and OPTIONS; a method-override header asking for such a method;
// or a protocol upgrade (etcd's v3 gateway turns every websocket into a
// POST, whatever the method of the upgrade request).
func isWrite(r *http.Request) bool {
	if !isReadMethod(r.Method) {
		return true
	}
	for _, h := range methodOverrideHeaders {
		for _, v := range r.Header.Values(h) {
			if !isReadMethod(strings.TrimSpace(v)) {
				return true
			}
		}
	}
	return r.Header.Get("Upgrade") != "" || headerHasToken(r.Header, "Connection", "upgrade")
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// cleanPath returns the canonical form of a decoded URL path the way Go's
// http.ServeMux (and so etcd) computes it: dot segments resolved, slashes
// collapsed, a trailing slash kept.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	c := path.Clean(p)
	if p[len(p)-1] == '/' && c != "/" {
		c += "/"
	}
	return c
}

// isCanonical reports whether etcd will act on u.Path exactly as written. A
// path with dot segments or doubled slashes makes etcd answer with a
// redirect to the cleaned path, or, for some spellings and some etcd
// builds, act on the cleaned path directly; an encoded slash makes the
// router and the key handler see different segments. Writes to such paths
// are never forwarded.
func isCanonical(u *url.URL) bool {
	return cleanPath(u.Path) == u.Path && !containsFold(u.RawPath, "%2f")
}

func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}

// keyOf returns the etcd key a clean path addresses, and false when the
// path is not under /v2/keys.
func keyOf(clean string) (string, bool) {
	rest, ok := strings.CutPrefix(clean, keysPrefix)
	if !ok || (rest != "" && rest[0] != '/') {
		return "", false
	}
	if rest = strings.TrimSuffix(rest, "/"); rest == "" {
		return "/", true
	}
	return rest, true
}

// isMetricsPath reports whether p is etcd's /metrics, which the site's proxy
// let through with any method: etcd's handler ignores the method and cannot
// change state.
func isMetricsPath(p string) bool { return p == "/metrics" }
