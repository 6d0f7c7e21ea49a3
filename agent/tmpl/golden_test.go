package tmpl

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// loadFixture reads testdata/conftool.json: etcd keys under /conftool/v1
// with values encoded as conftool writes them (wikimedia-usage.md §2.3,
// plus the hosts the §4 outputs mention).
func loadFixture(t testing.TB) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "conftool.json"))
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]string
	if err := json.Unmarshal(b, &keys); err != nil {
		t.Fatalf("testdata/conftool.json: %v", err)
	}
	return keys
}

// rerooted returns the keys under prefix with the prefix stripped, as a
// resource with that prefix sees them (confd's key re-rooting).
func rerooted(keys map[string]string, prefix string) *Store {
	out := map[string]string{}
	for k, v := range keys {
		if rest, ok := strings.CutPrefix(k, prefix); ok && strings.HasPrefix(rest, "/") {
			out[rest] = v
		}
	}
	return NewStore(out)
}

// The templates the site runs, written the way it writes them, must render
// byte for byte what confd renders (wikimedia-usage.md §4). The .golden
// files were written from §4 and also match the output of confd's own
// store and functions on the same data.
func TestGoldenWikimediaTemplates(t *testing.T) {
	keys := loadFixture(t)
	tests := []struct {
		name   string // testdata/<name>.tmpl and .golden
		prefix string // the resource's prefix
	}{
		{"pybal-pool", "/conftool/v1"},                                // §4.1: blank line for the inactive host
		{"dsh-group", "/conftool/v1/pools"},                           // §4.2: blank lines, depooled hosts kept
		{"dsh-canaries", "/conftool/v1"},                              // §4.2: {{- -}} trimming, no final newline
		{"discovery-appservers-rw", "/conftool/v1"},                   // §4.3: JSON booleans, ttl
		{"admin_state", "/conftool/v1"},                               // §4.4: gets, split, index, base
		{"conftool-state-mediawiki", "/conftool/v1/mediawiki-config"}, // §4.5: dir, reason string as true
		{"wikimedia-authdns", "/conftool/v1"},                         // §4.5: range $index, $element
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join("testdata", tt.name+".tmpl")
			text, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join("testdata", tt.name+".golden"))
			if err != nil {
				t.Fatal(err)
			}
			tp, err := Parse(file, string(text), testEnv(t))
			if err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			if err := tp.Execute(&got, rerooted(keys, tt.prefix)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Errorf("%s rendered\n%q\nwant\n%q", file, got.Bytes(), want)
			}
		})
	}
}

// §4.5 shows NAMESERVERS for the two core sites, and notes that when the
// first server is depooled the list starts with a space.
func TestGoldenAuthdnsSeparatorQuirk(t *testing.T) {
	text, err := os.ReadFile(filepath.Join("testdata", "wikimedia-authdns.tmpl"))
	if err != nil {
		t.Fatal(err)
	}
	tp, err := Parse("wikimedia-authdns.tmpl", string(text), testEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	const (
		codfw = "/pools/codfw/dnsbox/authdns-update/dns2004.wikimedia.org"
		eqiad = "/pools/eqiad/dnsbox/authdns-update/dns1004.wikimedia.org"
		yes   = `{"weight": 10, "pooled": "yes"}`
		no    = `{"weight": 10, "pooled": "no"}`
	)
	tests := []struct {
		codfw, eqiad, want string
	}{
		{yes, yes, `NAMESERVERS="dns2004.wikimedia.org dns1004.wikimedia.org"`},
		{no, yes, `NAMESERVERS=" dns1004.wikimedia.org"`},
		{yes, no, `NAMESERVERS="dns2004.wikimedia.org"`},
	}
	for _, tt := range tests {
		var got bytes.Buffer
		if err := tp.Execute(&got, NewStore(map[string]string{codfw: tt.codfw, eqiad: tt.eqiad})); err != nil {
			t.Fatal(err)
		}
		want := "# This file is managed by puppet.\n" + tt.want + "\n"
		if got.String() != want {
			t.Errorf("codfw %s, eqiad %s: got %q, want %q", tt.codfw, tt.eqiad, got.String(), want)
		}
	}
}
