package gate

import (
	"strings"
	"testing"
)

// Written by htpasswd -m (apr1) and htpasswd -B -C 4 (bcrypt).
const siteHtpasswd = `# users of the gate
root:$apr1$fGLQ4S4A$QXFqKmEGcBIaI9OCECwqB/
conftool:$apr1$HmN3Vi6J$QhkRVahT7wVasiYAhCq9g.
pool-eqiad-appserver:$2y$04$VgFGnPSaKgA4icRrz4f63u4ZqUy3BgCn2IZmq7OTy5gM4GbP9QFBG

pool-eqiad-jobrunner:$apr1$IR2MoClr$wKbuGWVh9mXNkeRzSqZWp0
`

func TestHtpasswdVerifiesAndCaches(t *testing.T) {
	h, err := ParseHtpasswd("users", []byte(siteHtpasswd))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		user, password string
		want           bool
	}{
		{"root", "root-pw", true},
		{"conftool", "conftool-pw", true},
		{"pool-eqiad-appserver", "appserver-pw", true},
		{"pool-eqiad-jobrunner", "jobrunner-pw", true},
		{"conftool", "root-pw", false},
		{"conftool", "", false},
		{"nobody", "x", false},
		{"", "", false},
	} {
		ok, cached := h.Verify(c.user, c.password)
		if ok != c.want || cached {
			t.Errorf("first Verify(%q, %q) = %v (cached %v), want %v uncached", c.user, c.password, ok, cached, c.want)
		}
		ok, cached = h.Verify(c.user, c.password)
		if ok != c.want || cached != c.want {
			t.Errorf("second Verify(%q, %q) = %v (cached %v), want %v from cache only when valid", c.user, c.password, ok, cached, c.want)
		}
	}
	// A cached user with a different, wrong password is still refused.
	if ok, _ := h.Verify("pool-eqiad-appserver", "appserver-pw2"); ok {
		t.Error("wrong password accepted after the right one was cached")
	}
	// The cache is keyed, not the password itself.
	for _, mac := range h.verified {
		if strings.Contains(string(mac[:]), "pw") {
			t.Error("cache holds plain text")
		}
	}
}

func TestHtpasswdRefusesUnknownFormatsWithFileAndLine(t *testing.T) {
	for _, c := range []struct{ name, line, want string }{
		{"sha1", "u:{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=", "{SHA}"},
		{"crypt", "u:jsMwXoJid6X6w", "crypt(3) or plain-text"},
		{"plain", "u:secret", "crypt(3) or plain-text"},
		{"sha512crypt", "u:$6$salt$abc", "$6$"},
		{"bad bcrypt", "u:$2y$04$short", "malformed bcrypt"},
		{"bad apr1", "u:$apr1$salt$short", "malformed apr1"},
		{"costly bcrypt", "u:$2y$15$VgFGnPSaKgA4icRrz4f63u4ZqUy3BgCn2IZmq7OTy5gM4GbP9QFBG", "bcrypt cost 15 refused"},
		{"no colon", "justauser", "want user:hash"},
		{"duplicate", "root:$apr1$fGLQ4S4A$QXFqKmEGcBIaI9OCECwqB/", "appears twice"},
	} {
		t.Run(c.name, func(t *testing.T) {
			text := "root:$apr1$fGLQ4S4A$QXFqKmEGcBIaI9OCECwqB/\n\n" + c.line + "\n"
			_, err := ParseHtpasswd("/etc/gate.htpasswd", []byte(text))
			if err == nil {
				t.Fatalf("accepted %q", c.line)
			}
			if !strings.Contains(err.Error(), "/etc/gate.htpasswd:3:") || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q should name file:line and say %q", err, c.want)
			}
		})
	}
}

// TestUnknownUsersMeetADummyOfTheCommonestKind: an unknown user's password
// is checked against a hash of the scheme and cost most users have, so
// that refusing it takes as long (timed through the gate in
// TestUnknownUserTakesAsLongAsAWrongPassword).
func TestUnknownUsersMeetADummyOfTheCommonestKind(t *testing.T) {
	h, err := ParseHtpasswd("users", []byte(siteHtpasswd))
	if err != nil {
		t.Fatal(err)
	}
	if h.dummy == nil || h.dummy.kind() != "apr1" {
		t.Fatalf("dummy for a file of 3 apr1 and 1 bcrypt hashes: %v", h.dummy)
	}
	if k := h.Kinds(); k["apr1"] != 3 || k["bcrypt cost 4"] != 1 || len(k) != 2 {
		t.Errorf("Kinds() = %v", k)
	}
	bcrypts := "a:$2y$04$VgFGnPSaKgA4icRrz4f63u4ZqUy3BgCn2IZmq7OTy5gM4GbP9QFBG\n" +
		"b:$2y$04$VgFGnPSaKgA4icRrz4f63u4ZqUy3BgCn2IZmq7OTy5gM4GbP9QFBG\n" +
		"c:$apr1$fGLQ4S4A$QXFqKmEGcBIaI9OCECwqB/\n"
	if h, err = ParseHtpasswd("users", []byte(bcrypts)); err != nil {
		t.Fatal(err)
	}
	if h.dummy == nil || h.dummy.kind() != "bcrypt cost 4" {
		t.Fatalf("dummy for a file of 2 bcrypt and 1 apr1 hashes: %v", h.dummy.kind())
	}
	// Nobody's password matches the dummy, the empty one included.
	for _, pw := range []string{"", "x", "appserver-pw"} {
		if h.dummy.matches(pw) {
			t.Errorf("the dummy hash matches %q", pw)
		}
	}
	if h, _ = ParseHtpasswd("empty", []byte("# nobody\n")); h.dummy != nil {
		t.Error("a dummy for a file without users")
	}
}
