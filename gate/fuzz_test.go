package gate

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// Fuzz targets, each run briefly in CI with its committed seed corpus
// (testdata/fuzz/<name>):
//
//	go test -run '^$' -fuzz '^FuzzWriteDecision$' -fuzztime 10s ./gate
//
// and likewise for FuzzACL, FuzzHtpasswd and FuzzAPR1. Each checks the
// code against a property or a naive second implementation, not only
// that it does not crash.

// oracleMayWrite is the ACL's rule, written the slow and obvious way over
// the rule list: the rule with the longest prefix covering key (on whole
// segments) must allow user, and so must every rule for a prefix below
// key, since writing a directory reaches everything beneath it.
func oracleMayWrite(rules []Rule, key, user string) bool {
	covers := func(prefix, k string) bool {
		return prefix == "/" || k == prefix || strings.HasPrefix(k, prefix+"/")
	}
	allows := func(r Rule) bool { return r.Anonymous || (user != "" && slices.Contains(r.Users, user)) }
	var best *Rule
	for i, r := range rules {
		if covers(r.Prefix, key) && (best == nil || len(r.Prefix) > len(best.Prefix)) {
			best = &rules[i]
		}
	}
	if best == nil || !allows(*best) {
		return false
	}
	for _, r := range rules {
		if r.Prefix != key && covers(key, r.Prefix) && !allows(r) {
			return false
		}
	}
	return true
}

// fuzzACL has nested rules of every kind: anonymous under restricted,
// restricted under anonymous, a user allowed above but not below.
const fuzzACL = siteACL + `
[[acl]]
prefix = "/eventlogging/private"
users = ["root"]

[[acl]]
prefix = "/conftool/v1/pools/eqiad/appserver/open"
anonymous = true
`

// fuzzPasswords are the passwords of siteHtpasswd's users.
var fuzzPasswords = map[string]string{
	"root": "root-pw", "conftool": "conftool-pw",
	"pool-eqiad-appserver": "appserver-pw", "pool-eqiad-jobrunner": "jobrunner-pw",
}

// FuzzWriteDecision: a request whose method writes reaches etcd's key K
// only if the ACL lets its (verified) user, or anyone, write K; any other
// path it reaches needs an admin. What "reaches K" means is computed as
// etcd computes it, from the request as the server parsed it: etcd routes
// on the path as sent and acts on the decoded path, cleaned. The upstream
// is a closed port, so a forwarded request is exactly one answered 502.
// Conversely a plain, canonical write that the ACL allows is forwarded.
func FuzzWriteDecision(f *testing.F) {
	dir := f.TempDir()
	os.WriteFile(filepath.Join(dir, "acl.toml"), []byte(fuzzACL), 0o600)
	os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(siteHtpasswd), 0o600)
	srv, err := New(Config{
		Upstreams:    []string{"http://127.0.0.1:1"},
		ACLFile:      filepath.Join(dir, "acl.toml"),
		HtpasswdFile: filepath.Join(dir, "htpasswd"),
	})
	if err != nil {
		f.Fatal(err)
	}
	acl := srv.acl.Load()
	rules := acl.Rules()
	users := []string{"", "root", "conftool", "pool-eqiad-appserver", "pool-eqiad-jobrunner", "nobody"}

	for _, s := range []struct {
		method, target string
		who            uint8
		header         string
	}{
		{"PUT", "/v2/keys/conftool/v1/x", 2, ""},
		{"PUT", "/v2/keys/conftool/v1/pools/eqiad/appserver/apache2/mw1", 3, ""},
		{"DELETE", "/v2/keys/conftool?recursive=true", 2, ""},
		{"PUT", "/v2/keys/conftool/v1/pools/eqiad/appserver/../jobrunner/x", 3, ""},
		{"PUT", "/v2/keys/conftool%2F..%2Fspicerack", 2, ""},
		{"POST", "/v2/keys/eventlogging/private", 0, ""},
		{"GET", "/v2/keys/spicerack?value=x", 0, "X-HTTP-Method-Override: PUT\r\n"},
		{"put", "/v2/keys/conftoolfoo", 2, ""},
		{"POST", "/v3/kv/put", 1, ""},
		{"PUT", "//v2/keys/x", 1, ""},
	} {
		f.Add(s.method, s.target, s.who, s.header)
	}
	f.Fuzz(func(t *testing.T, method, target string, who uint8, header string) {
		user := users[int(who)%len(users)]
		raw := method + " " + target + " HTTP/1.1\r\nHost: gate\r\n" + header
		if user != "" {
			pw := fuzzPasswords[user]
			if who >= uint8(len(users)) {
				pw = "wrong-pw"
			}
			r := httptest.NewRequest("GET", "/", nil)
			r.SetBasicAuth(user, pw)
			raw += "Authorization: " + r.Header.Get("Authorization") + "\r\n"
		}
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw + "\r\n")))
		if err != nil {
			return // the server answers 400 itself
		}
		r.RemoteAddr = "192.0.2.1:4242"
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, r)
		forwarded := rec.Code == http.StatusBadGateway

		name, password, _ := r.BasicAuth()
		pw, known := fuzzPasswords[name]
		verified := known && pw == password
		decoded, escaped := r.URL.Path, r.URL.EscapedPath()
		readMethod := r.Method == "GET" || r.Method == "HEAD" || r.Method == "OPTIONS"

		if forwarded && !readMethod && cleanPath(decoded) != "/metrics" {
			for _, p := range []string{decoded, escaped} {
				rest, under := strings.CutPrefix(p, "/v2/keys")
				if under && (rest == "" || rest[0] == '/') {
					key := path.Join("/", rest)
					if !oracleMayWrite(rules, key, "") && !(verified && oracleMayWrite(rules, key, name)) {
						t.Fatalf("%s %s as %q (verified %v) reached key %s, which the ACL does not let it write", r.Method, target, name, verified, key)
					}
				} else if !(verified && acl.IsAdmin(name)) {
					t.Fatalf("%s %s as %q (verified %v) reached %s, which needs an admin", r.Method, target, name, verified, p)
				}
			}
		}

		// The converse, for plain writes to clean key paths.
		plain := header == "" && (r.Method == "PUT" || r.Method == "POST" || r.Method == "DELETE")
		clean := path.Clean(decoded) == decoded && escaped == decoded && r.URL.RawPath == ""
		if rest, ok := strings.CutPrefix(decoded, "/v2/keys/"); plain && clean && ok && rest != "" {
			key := "/" + rest
			allowed := oracleMayWrite(rules, key, "") || (verified && oracleMayWrite(rules, key, name))
			if allowed && !forwarded {
				t.Fatalf("%s %s as %q: the ACL allows it, yet the gate answered %d %s", r.Method, target, name, rec.Code, rec.Body)
			}
		}
	})
}

// FuzzACL: the loader never crashes and names the file in its errors; a
// file it accepts decides every write exactly as the naive oracle does.
func FuzzACL(f *testing.F) {
	f.Add([]byte(fuzzACL), "/conftool/v1/pools/eqiad/appserver/x", "pool-eqiad-appserver")
	f.Add([]byte(siteACL), "/conftool", "conftool")
	f.Add([]byte("[[acl]]\nprefix = \"/\"\nanonymous = true\n[[acl]]\nprefix = \"/a/b\"\nusers = [\"u\"]\n"), "/a", "")
	f.Add([]byte("[[rate_limit]]\nclients = [\"10.0.0.0/8\"]\nrate = 5\nburst = 10\n[[rate_limit]]\nusers = [\"u\"]\nrate = 0\n"), "/", "u")
	f.Add([]byte("admins = [\"root\"]\n[[acl]]\nprefix = \"/x/\"\n"), "/x", "root")
	f.Fuzz(func(t *testing.T, data []byte, key, user string) {
		a, err := ParseACL("fuzz.toml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.toml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		rules := a.Rules()
		for _, r := range rules {
			if path.Clean(r.Prefix) != r.Prefix || r.Prefix[0] != '/' {
				t.Fatalf("accepted a prefix that is not a clean absolute path: %q", r.Prefix)
			}
		}
		key = path.Clean("/" + key)
		for _, u := range []string{user, ""} {
			if got, want := a.MayWrite(key, u), oracleMayWrite(rules, key, u); got != want {
				t.Fatalf("MayWrite(%q, %q) = %v, the rules say %v\n%s", key, u, got, want, data)
			}
		}
		for _, r := range rules { // and on every prefix the file names
			if got, want := a.MayWrite(r.Prefix, user), oracleMayWrite(rules, r.Prefix, user); got != want {
				t.Fatalf("MayWrite(%q, %q) = %v, the rules say %v\n%s", r.Prefix, user, got, want, data)
			}
		}
		a.UserLimit(user)
		users := a.Users()
		if !slices.IsSorted(users) {
			t.Fatalf("Users() not sorted: %v", users)
		}
	})
}

// FuzzHtpasswd: the parser never crashes, names file and line in its
// errors, and a file it accepts verifies exactly its users: the line's
// password hash decides, an unknown user never passes.
func FuzzHtpasswd(f *testing.F) {
	f.Add([]byte(siteHtpasswd), "conftool", "conftool-pw")
	f.Add([]byte("u:$apr1$abc$0123456789012345678901\n"), "u", "x")
	f.Add([]byte("u:$2y$04$short\n"), "u", "")
	f.Add([]byte("# comment\n\nu:{SHA}abc=\n"), "v", "w")
	costly := regexp.MustCompile(`\$2[aby]\$(0[7-9]|[1-9][0-9])\$`)
	f.Fuzz(func(t *testing.T, data []byte, user, password string) {
		if costly.Match(data) {
			return // a costly bcrypt hash takes up to a second a check: too slow to fuzz
		}
		h, err := ParseHtpasswd("fuzz.htpasswd", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.htpasswd") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		ok, _ := h.Verify(user, password)
		if ok && !h.Has(user) {
			t.Fatalf("unknown user %q verified", user)
		}
		if stored, known := h.hashes[user]; known && ok != stored.matches(password) {
			t.Fatalf("Verify(%q) = %v, its hash says otherwise", user, ok)
		}
		if again, cached := h.Verify(user, password); again != ok || cached != ok {
			t.Fatalf("second Verify(%q) = %v (cached %v), first %v", user, again, cached, ok)
		}
		if len(h.hashes) > 0 && h.dummy == nil {
			t.Fatal("no dummy hash for unknown users")
		}
	})
}

// FuzzAPR1: parsing an apr1 hash never crashes; a hash md5Crypt makes
// parses back to its salt, matches its password and no other.
func FuzzAPR1(f *testing.F) {
	f.Add("$apr1$HmN3Vi6J$QhkRVahT7wVasiYAhCq9g.", "conftool-pw")
	f.Add("$apr1$$", "")
	f.Add("$apr1$toolongsalt$QhkRVahT7wVasiYAhCq9g.", "x")
	f.Add("$apr1$a$b$c", "\x00\xff")
	f.Fuzz(func(t *testing.T, stored, password string) {
		salt, ok := parseAPR1(stored)
		if !ok {
			salt = "saltsalt"
		}
		if len(salt) > 8 || (ok && salt == "") {
			t.Fatalf("parseAPR1(%q) accepted salt %q", stored, salt)
		}
		made := md5Crypt([]byte(password), []byte(salt), apr1Magic)
		back, ok := parseAPR1(made)
		if !ok || back != salt {
			t.Fatalf("md5Crypt made %q, which parses to salt %q (%v), want %q", made, back, ok, salt)
		}
		h := apr1Hash{full: made, salt: salt}
		if !h.matches(password) || h.matches(password+"x") {
			t.Fatalf("%q does not decide %q alone", made, password)
		}
	})
}
