package agent

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/confsync/confsync/backends"
)

// FuzzLoadResource parses hostile resource files (conf.d/*.toml) with a
// hostile template beside them. Loading never panics; every error is a
// ConfigError naming the file (and a line inside it, when it gives one);
// an accepted resource has a clean absolute dest, a template, and keys
// that are clean absolute etcd keys. Seeds: f.Add below and
// testdata/fuzz/FuzzLoadResource. Run it for longer with
//
//	go test -run '^$' -fuzz '^FuzzLoadResource$' -fuzztime 1m ./agent
//
// or with every other target through scripts/fuzz.sh.
func FuzzLoadResource(f *testing.F) {
	const full = `[template]
src = "a.tmpl"
dest = "/etc/dsh/group/x"
mode = "0444"
keys = [ "/eqiad/jobrunner/nginx", "/codfw/jobrunner/nginx", ]
prefix = "/conftool/v1/pools"
uid = 0
gid = 0
check_cmd = "/usr/local/bin/check {{.src}} {{.dest}}"
reload_cmd = "systemctl reload x"
check_cmd_timeout = "5s"
reload_cmd_timeout = 90
wait = "1s:5s"
`
	for _, seed := range []struct{ toml, tmpl string }{
		{full, `{{range ls "/eqiad/jobrunner/nginx"}}{{.}}{{end}}`},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nkeys = [\"/\"]\n", "x"},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nkeys = [\"../../etc\", \"//a//b/\", \"_hidden\", \".\"]\nprefix = \"a/../..\"\n", "x"},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/../tmp//a/.\"\n", "x"},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"relative/a\"\n", "x"},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nuid = 4294967296\ngid = 4294967295\n", "x"},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nuid = -2\n", "x"},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nuid = 9223372036854775807\n", "x"},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nmode = 0o7777\n", "x"},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nmode = 644\n", "x"},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nmode = 1.5\n", "x"},
		{"template = { src = \"a.tmpl\", dest = \"/tmp/a\", mode = 0o644 }\n", "x"},
		{"template.src = \"a.tmpl\"\ntemplate.dest = \"/tmp/a\"\ntemplate.mode = 420\n# 0o\n", "x"},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nwait = \"-1s\"\ncheck_cmd_timeout = -5\n", "x"},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nwait = \"9223372036s\"\n", "x"},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nreload_cmd = \"{{.nope}}\"\ncheck_cmd = \"{{\"\n", "x"},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\n", "{{ if }}"},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\n", "{{define \"x\"}}{{template \"x\"}}{{end}}{{template \"x\"}}"},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\n", "{{ nosuchfunc }}"},
		{"[template]\nsrc = \"../conf.d/fuzz.toml\"\ndest = \"/tmp/a\"\n", ""},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nowner = \"root\"\ngroup = \"root\"\nuid = 1\n", ""},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\n[template]\n", ""},
		{"[[template]]\nsrc = \"a.tmpl\"\n", ""},
		{"[template]\n\"src\" = \"a.tmpl\"\n'dest' = \"/tmp/a\"\nkeys = [1, 2]\n", ""},
		{"[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nkeys = [\"\"]\n", ""},
		{"\xff\xfe[template]", ""},
		{"", ""},
	} {
		f.Add([]byte(seed.toml), seed.tmpl)
	}
	confDir := f.TempDir()
	if err := os.MkdirAll(filepath.Join(confDir, "templates"), 0o755); err != nil {
		f.Fatal(err)
	}
	file := filepath.Join(confDir, "conf.d", "fuzz.toml")
	f.Fuzz(func(t *testing.T, data []byte, tmplText string) {
		if err := os.WriteFile(filepath.Join(confDir, "templates", "a.tmpl"), []byte(tmplText), 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := parseResource(file, data, LoadOptions{ConfDir: confDir})
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.File != file || !strings.Contains(err.Error(), file) {
				t.Fatalf("error %q does not name %s", err, file)
			}
			if lines := bytes.Count(data, []byte("\n")) + 1; ce.Line < 0 || ce.Line > lines {
				t.Fatalf("error %q: line %d of a file of %d lines", err, ce.Line, lines)
			}
			if r != nil {
				t.Fatalf("error %q and a resource", err)
			}
			return
		}
		switch {
		case r.File != file || r.Name != "fuzz.toml":
			t.Fatalf("resource names %s (%s), not %s", r.File, r.Name, file)
		case r.Src == "" || r.Template == nil:
			t.Fatalf("resource without a template: src %q", r.Src)
		case !filepath.IsAbs(r.Dest) || filepath.Clean(r.Dest) != r.Dest:
			t.Fatalf("dest %q is not a clean absolute path", r.Dest)
		case r.Prefix != backends.CleanKey(r.Prefix):
			t.Fatalf("prefix %q is not a clean key", r.Prefix)
		case len(r.PrefixedKeys) != len(r.Keys):
			t.Fatalf("keys %q became %q", r.Keys, r.PrefixedKeys)
		case r.UID < -1 || r.GID < -1 || r.UID > maxID || r.GID > maxID:
			t.Fatalf("owner %d:%d is no uid and gid", r.UID, r.GID)
		case r.Mode&^(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky) != 0:
			t.Fatalf("mode %v is no file mode", r.Mode)
		case r.CheckTimeout <= 0 || r.ReloadTimeout <= 0 || r.WaitMin < 0 || r.WaitMax < r.WaitMin:
			t.Fatalf("timeouts %v %v wait %v:%v", r.CheckTimeout, r.ReloadTimeout, r.WaitMin, r.WaitMax)
		}
		for _, k := range r.PrefixedKeys {
			if k != backends.CleanKey(k) {
				t.Fatalf("key %q is not a clean absolute key", k)
			}
		}
	})
}
