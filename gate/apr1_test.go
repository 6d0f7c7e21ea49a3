package gate

import (
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"strings"
	"testing"
)

// Hashes written by `htpasswd -nbm u PASSWORD` (apache2-utils 2.4).
var apr1Vectors = []struct{ password, hash string }{
	{"", "$apr1$bXNXPbwr$wPfCB0aJOy4x/Gb5AtR9D1"},
	{"a", "$apr1$4F9KWXSr$YzPaWOIqE4yWz1ybkS9Fg/"},
	{"password", "$apr1$zCbkt6dC$eT5DRTuIqnqtbnzBqw/7D1"},
	{"conftool-secret", "$apr1$7A8ZXULw$aq0Q1YXi0MJNXPomkkou21"},
	{"0123456789abcdef0123456789abcdefXYZ", "$apr1$AhzcBk71$Rm0z/muwnBYmrRaSc7SNy/"},
	{"pässwörd", "$apr1$Z85MHeP.$B4DFRWZ9ghO6e5S3rl3IY."},
	{"with:colon and space", "$apr1$m.HAVqJ2$zwV8VIKoW4uOXwZgCEWSz."},
}

func TestAPR1MatchesApacheVectors(t *testing.T) {
	for _, v := range apr1Vectors {
		salt, ok := parseAPR1(v.hash)
		if !ok {
			t.Fatalf("parseAPR1(%q) refused a hash written by htpasswd", v.hash)
		}
		if got := md5Crypt([]byte(v.password), []byte(salt), apr1Magic); got != v.hash {
			t.Errorf("apr1(%q, %q) = %q, htpasswd wrote %q", v.password, salt, got, v.hash)
		}
		if !(apr1Hash{full: v.hash, salt: salt}).matches(v.password) {
			t.Errorf("hash of %q does not match its own password", v.password)
		}
		if (apr1Hash{full: v.hash, salt: salt}).matches(v.password + "x") {
			t.Errorf("hash of %q matches a different password", v.password)
		}
	}
}

// TestAPR1MatchesHtpasswdBinary compares with hashes freshly made by the
// installed htpasswd for random passwords of many lengths (the algorithm
// branches on length in two places).
func TestAPR1MatchesHtpasswdBinary(t *testing.T) {
	bin, err := exec.LookPath("htpasswd")
	if err != nil {
		t.Skip("htpasswd (apache2-utils) not on PATH; the fixed vectors above still run")
	}
	for n := 0; n <= 40; n += 3 {
		raw := make([]byte, n)
		rand.Read(raw)
		password := hex.EncodeToString(raw)[:n]
		out, err := exec.Command(bin, "-nbm", "u", password).Output()
		if err != nil {
			t.Fatalf("htpasswd: %v", err)
		}
		hash := strings.TrimPrefix(strings.TrimSpace(string(out)), "u:")
		salt, ok := parseAPR1(hash)
		if !ok {
			t.Fatalf("parseAPR1(%q) refused htpasswd output", hash)
		}
		if got := md5Crypt([]byte(password), []byte(salt), apr1Magic); got != hash {
			t.Errorf("len %d: apr1 = %q, htpasswd wrote %q", n, got, hash)
		}
	}
}

func TestMD5CryptClassicVector(t *testing.T) {
	// The original FreeBSD $1$ variant differs only in its magic string; this
	// is `openssl passwd -1 -salt saltstri password`.
	if got := md5Crypt([]byte("password"), []byte("saltstri"), "$1$"); got != "$1$saltstri$qQY4WxjABChYG1ccLpfkz/" {
		t.Errorf("md5crypt = %q", got)
	}
}

func TestParseAPR1RefusesMangledHashes(t *testing.T) {
	for _, h := range []string{
		"$apr1$",
		"$apr1$salt",
		"$apr1$$wPfCB0aJOy4x/Gb5AtR9D1",
		"$apr1$toolongsalt$wPfCB0aJOy4x/Gb5AtR9D1",
		"$apr1$bXNXPbwr$wPfCB0aJOy4x/Gb5AtR9D",   // truncated
		"$apr1$bXNXPbwr$wPfCB0aJOy4x/Gb5AtR9D1x", // too long
		"$apr1$bX!XPbwr$wPfCB0aJOy4x/Gb5AtR9D1",
	} {
		if _, ok := parseAPR1(h); ok {
			t.Errorf("parseAPR1(%q) accepted a malformed hash", h)
		}
	}
}
