package gate

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// siteACL is the ACL of the issue plus the per-pool rules the site
// generates for every LVS service.
const siteACL = `
admins = ["root"]

[[acl]]
prefix = "/"
users = ["root"]

[[acl]]
prefix = "/conftool"
users = ["root", "conftool"]

[[acl]]
prefix = "/eventlogging"
anonymous = true

[[acl]]
prefix = "/conftool/v1/pools/eqiad/appserver"
users = ["root", "conftool", "pool-eqiad-appserver"]

[[acl]]
prefix = "/conftool/v1/pools/eqiad/jobrunner"
users = ["root", "conftool", "pool-eqiad-jobrunner"]
`

// SiteACL shares siteACL with the external tests (package gate_test).
const SiteACL = siteACL

func mustACL(t testing.TB, text string) *ACL {
	t.Helper()
	a, err := ParseACL("acl.toml", []byte(text))
	if err != nil {
		t.Fatalf("ParseACL: %v", err)
	}
	return a
}

func TestACLLongestPrefixOnWholeSegments(t *testing.T) {
	a := mustACL(t, siteACL)
	cases := []struct {
		key, user string
		want      bool
	}{
		{"/conftool/v1/pools/eqiad/appserver/apache2/mw1", "pool-eqiad-appserver", true},
		{"/conftool/v1/pools/eqiad/appserver/apache2/mw1", "conftool", true},
		{"/conftool/v1/pools/eqiad/appserver/apache2/mw1", "root", true},
		{"/conftool/v1/pools/eqiad/appserver/apache2/mw1", "", false},
		{"/conftool/v1/pools/eqiad/appserver", "pool-eqiad-appserver", true},
		{"/conftool/v1/pools/eqiad/jobrunner/x", "pool-eqiad-appserver", false},
		{"/conftool/v1/pools/eqiad/appserverfoo", "pool-eqiad-appserver", false},
		{"/conftool/v1/pools/eqiad/appserverfoo", "conftool", true},
		{"/conftool", "conftool", true}, // every pool rule beneath lists conftool
		{"/conftool", "pool-eqiad-appserver", false},
		{"/conftoolfoo/x", "conftool", false},
		{"/conftoolfoo/x", "root", true},
		{"/spicerack/locks/x", "conftool", false},
		{"/spicerack/locks/x", "root", true},
		{"/eventlogging/x", "", true},
		{"/eventlogging/x", "conftool", true},
		{"/eventloggingfoo", "", false},
		{"/", "root", true},
		{"/", "conftool", false},
		{"/", "", false},
	}
	for _, c := range cases {
		if got := a.MayWrite(c.key, c.user); got != c.want {
			t.Errorf("MayWrite(%q, %q) = %v, want %v", c.key, c.user, got, c.want)
		}
	}
	if !a.IsAdmin("root") || a.IsAdmin("conftool") || a.IsAdmin("") {
		t.Errorf("admins: root should be the only admin")
	}
}

// TestACLDirectoryWriteNeedsRulesBelow: a user allowed on a parent but not
// on a rule beneath it may not write (recursively delete, set a TTL on) the
// parent, because that would remove keys it may not touch.
func TestACLDirectoryWriteNeedsRulesBelow(t *testing.T) {
	a := mustACL(t, `
[[acl]]
prefix = "/a"
users = ["alice", "bob"]
[[acl]]
prefix = "/a/b/c"
users = ["bob"]
[[acl]]
prefix = "/open"
anonymous = true
[[acl]]
prefix = "/open/locked"
users = []
`)
	for _, c := range []struct {
		key, user string
		want      bool
	}{
		{"/a/x", "alice", true},
		{"/a/b", "alice", false}, // /a/b/c lies beneath
		{"/a", "alice", false},
		{"/a", "bob", true},
		{"/a/b/c/d", "alice", false},
		{"/a/b/c/d", "bob", true},
		{"/open/x", "", true},
		{"/open", "", false},          // would remove /open/locked
		{"/open/locked/x", "", false}, // users = [] lets nobody write
		{"/open/locked/x", "alice", false},
		{"/elsewhere", "alice", false}, // no rule covers it
	} {
		if got := a.MayWrite(c.key, c.user); got != c.want {
			t.Errorf("MayWrite(%q, %q) = %v, want %v", c.key, c.user, got, c.want)
		}
	}
}

func TestACLFileIsStrict(t *testing.T) {
	for _, c := range []struct{ name, text, want string }{
		{"unknown top-level key", "admin = [\"root\"]", "unknown key admin"},
		{"unknown rule key", "[[acl]]\nprefix = \"/a\"\nuser = [\"x\"]", "unknown key acl.user"},
		{"missing prefix", "[[acl]]\nusers = [\"x\"]", "prefix is required"},
		{"relative prefix", "[[acl]]\nprefix = \"conftool\"\nusers = [\"x\"]", "must start with /"},
		{"trailing slash", "[[acl]]\nprefix = \"/conftool/\"\nusers = [\"x\"]", `write "/conftool"`},
		{"dot segment", "[[acl]]\nprefix = \"/a/../b\"\nusers = [\"x\"]", `write "/b"`},
		{"doubled slash", "[[acl]]\nprefix = \"//a\"\nusers = [\"x\"]", `write "/a"`},
		{"wildcard", "[[acl]]\nprefix = \"/a*\"\nusers = [\"x\"]", "wildcards"},
		{"duplicate", "[[acl]]\nprefix = \"/a\"\nusers = [\"x\"]\n[[acl]]\nprefix = \"/a\"\nusers = [\"y\"]", "appears twice"},
		{"anonymous with users", "[[acl]]\nprefix = \"/a\"\nanonymous = true\nusers = [\"x\"]", "anonymous = true"},
		{"bad user", "[[acl]]\nprefix = \"/a\"\nusers = [\"a:b\"]", "bad user name"},
		{"wrong type", "[[acl]]\nprefix = \"/a\"\nusers = \"root\"", "acl.toml"},
		{"not toml", "admins = [", "acl.toml"},
		{"unknown limit key", "[[rate_limit]]\nusers = [\"x\"]\nrate = 1\nburst = 1\nbursts = 2", "unknown key rate_limit.bursts"},
		{"limit for nobody", "[[rate_limit]]\nrate = 1\nburst = 1", "give either clients"},
		{"limit for both", "[[rate_limit]]\nusers = [\"x\"]\nclients = [\"10.0.0.1\"]\nrate = 1\nburst = 1", "give either clients"},
		{"limit without rate", "[[rate_limit]]\nusers = [\"x\"]\nburst = 1", "rate is required"},
		{"limit without burst", "[[rate_limit]]\nusers = [\"x\"]\nrate = 10", "burst is required"},
		{"negative rate", "[[rate_limit]]\nusers = [\"x\"]\nrate = -1\nburst = 1", "rate -1"},
		{"infinite rate", "[[rate_limit]]\nusers = [\"x\"]\nrate = inf\nburst = 1", "rate +Inf"},
		{"bad client", "[[rate_limit]]\nclients = [\"10.0.0.0/33\"]\nrate = 1\nburst = 1", `client "10.0.0.0/33"`},
		{"host name client", "[[rate_limit]]\nclients = [\"conf1001\"]\nrate = 1\nburst = 1", "CIDR prefix"},
		{"duplicate client", "[[rate_limit]]\nclients = [\"10.0.0.0/8\", \"10.1.0.0/8\"]\nrate = 1\nburst = 1", "client 10.0.0.0/8 has a limit already"},
		{"duplicate user", "[[rate_limit]]\nusers = [\"x\"]\nrate = 1\nburst = 1\n[[rate_limit]]\nusers = [\"x\"]\nrate = 0", `entry 2: user "x" has a limit already`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseACL("acl.toml", []byte(c.text))
			if err == nil {
				t.Fatalf("accepted:\n%s", c.text)
			}
			if !strings.Contains(err.Error(), "acl.toml") || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q should name the file and say %q", err, c.want)
			}
		})
	}
}

// TestACLRateLimits: [[rate_limit]] entries set limits for clients (the
// longest matching prefix wins; IPv4-mapped addresses are IPv4) and users.
func TestACLRateLimits(t *testing.T) {
	a := mustACL(t, siteACL+`
[[rate_limit]]
clients = ["10.64.0.0/16", "2620:0:861::/48"]
rate = 500
burst = 5000
[[rate_limit]]
clients = ["10.64.32.7"]
rate = 0
[[rate_limit]]
users = ["conftool", "root"]
rate = 0.5
burst = 3
`)
	for _, c := range []struct {
		addr string
		want RateLimit
		ok   bool
	}{
		{"10.64.1.2", RateLimit{500, 5000}, true},
		{"::ffff:10.64.1.2", RateLimit{500, 5000}, true},
		{"10.64.32.7", RateLimit{}, true},
		{"10.65.0.1", RateLimit{}, false},
		{"2620:0:861:1::5", RateLimit{500, 5000}, true},
	} {
		got, ok := a.ClientLimit(netip.MustParseAddr(c.addr))
		if got != c.want || ok != c.ok {
			t.Errorf("ClientLimit(%s) = %v %v, want %v %v", c.addr, got, ok, c.want, c.ok)
		}
	}
	if l, ok := a.UserLimit("root"); !ok || l != (RateLimit{0.5, 3}) {
		t.Errorf("UserLimit(root) = %v %v", l, ok)
	}
	if _, ok := a.UserLimit("pool-eqiad-appserver"); ok {
		t.Error("a limit for a user the file does not list")
	}
}

func TestLoadACLNamesMissingFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.toml")
	if _, err := LoadACL(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("LoadACL(missing) = %v, want an error naming %s", err, missing)
	}
	good := filepath.Join(t.TempDir(), "acl.toml")
	os.WriteFile(good, []byte(siteACL), 0o600)
	a, err := LoadACL(good)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(a.Users(), ","); got != "conftool,pool-eqiad-appserver,pool-eqiad-jobrunner,root" {
		t.Errorf("Users() = %s", got)
	}
	if len(a.Rules()) != 5 {
		t.Errorf("Rules() has %d entries, want 5", len(a.Rules()))
	}
}

func TestCleanPathAndKeys(t *testing.T) {
	for in, want := range map[string]string{
		"/v2/keys/a/../b":   "/v2/keys/b",
		"//v2/keys/a":       "/v2/keys/a",
		"/v2/keys/a/":       "/v2/keys/a/",
		"/v2/keys/./a//b/":  "/v2/keys/a/b/",
		"/v2/keys/a/..":     "/v2/keys",
		"/":                 "/",
		"/v2/keys/../../..": "/",
	} {
		if got := cleanPath(in); got != want {
			t.Errorf("cleanPath(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{
		"/v2/keys":           "/",
		"/v2/keys/":          "/",
		"/v2/keys/conftool":  "/conftool",
		"/v2/keys/conftool/": "/conftool",
		"/v2/keysfoo":        "",
		"/v2/members":        "",
	} {
		got, ok := keyOf(in)
		if ok != (want != "") || got != want {
			t.Errorf("keyOf(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}
