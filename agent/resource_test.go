package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// confdir writes a confdir with the given files (paths relative to it).
func confdir(tb testing.TB, files map[string]string) string {
	tb.Helper()
	dir := tb.TempDir()
	for name, text := range files {
		if err := mkdirAndWrite(filepath.Join(dir, name), text); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}

func mkdirAndWrite(path, text string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(text), 0o644)
}

func TestLoadReadsConfdResource(t *testing.T) {
	dir := confdir(t, map[string]string{
		"conf.d/_etc_dsh_group_x.toml": `[template]
src = "dsh.tmpl"
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
`,
		"templates/dsh.tmpl": "{{range ls \"/eqiad/jobrunner/nginx\"}}{{.}}\n{{end}}",
	})
	r, err := Load(filepath.Join(dir, "conf.d/_etc_dsh_group_x.toml"), LoadOptions{ConfDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != "_etc_dsh_group_x.toml" || r.Dest != "/etc/dsh/group/x" || r.Mode != 0o444 || r.UID != 0 || r.GID != 0 {
		t.Fatalf("resource %+v", r)
	}
	want := []string{"/conftool/v1/pools/eqiad/jobrunner/nginx", "/conftool/v1/pools/codfw/jobrunner/nginx"}
	if strings.Join(r.PrefixedKeys, " ") != strings.Join(want, " ") {
		t.Fatalf("prefixed keys %v", r.PrefixedKeys)
	}
	if r.CheckTimeout != 5*time.Second || r.ReloadTimeout != 90*time.Second || r.WaitMin != time.Second || r.WaitMax != 5*time.Second {
		t.Fatalf("timeouts %v %v wait %v:%v", r.CheckTimeout, r.ReloadTimeout, r.WaitMin, r.WaitMax)
	}
	line, err := r.commandLine(r.CheckCmd, "/etc/dsh/group/.x.stage")
	if err != nil || line != "/usr/local/bin/check /etc/dsh/group/.x.stage /etc/dsh/group/x" {
		t.Fatalf("check command %q %v", line, err)
	}
}

func TestGlobalPrefixReplacesResourcePrefix(t *testing.T) {
	dir := confdir(t, map[string]string{
		"conf.d/a.toml":    "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nprefix = \"own\"\nkeys = [\"/k\"]\n",
		"templates/a.tmpl": "x",
	})
	r, err := Load(filepath.Join(dir, "conf.d/a.toml"), LoadOptions{ConfDir: dir})
	if err != nil || r.Prefix != "/own" || r.PrefixedKeys[0] != "/own/k" {
		t.Fatalf("own prefix: %+v %v", r, err)
	}
	r, err = Load(filepath.Join(dir, "conf.d/a.toml"), LoadOptions{ConfDir: dir, Prefix: "/global/"})
	if err != nil || r.Prefix != "/global" || r.PrefixedKeys[0] != "/global/k" {
		t.Fatalf("global prefix: %+v %v", r, err)
	}
}

func TestModes(t *testing.T) {
	for text, want := range map[string]os.FileMode{
		`"0644"`: 0o644, `"644"`: 0o644, `"0o600"`: 0o600, `0o444`: 0o444, `"4755"`: 0o755 | os.ModeSetuid,
	} {
		dir := confdir(t, map[string]string{
			"conf.d/a.toml":    "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nmode = " + text + "\n",
			"templates/a.tmpl": "x",
		})
		r, err := Load(filepath.Join(dir, "conf.d/a.toml"), LoadOptions{ConfDir: dir})
		if err != nil || r.Mode != want {
			t.Errorf("mode %s: got %v %v, want %v", text, r, err, want)
		}
	}
}

// Every bad resource file is refused with the file, the line and the key,
// and a hint of what to do.
func TestBadResourceFilesAreNamedPrecisely(t *testing.T) {
	cases := []struct {
		name, toml, want string
		line             int
		key              string
	}{
		{"unknown key", "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nowner_name = \"x\"\n", "unknown key", 4, "template.owner_name"},
		{"unknown table", "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\n[extra]\nx = 1\n", "unknown key", 0, "extra"},
		{"decimal-looking mode", "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nmode = \"0689\"\n", "not an octal file mode", 4, "mode"},
		{"integer mode", "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nmode = 644\n", "not a file mode", 4, "mode"},
		{"missing template", "[template]\nsrc = \"nope.tmpl\"\ndest = \"/tmp/a\"\n", "nope.tmpl", 2, "src"},
		{"template parse error", "[template]\nsrc = \"broken.tmpl\"\ndest = \"/tmp/a\"\n", "broken.tmpl:2", 2, "src"},
		{"no src", "[template]\ndest = \"/tmp/a\"\n", "missing", 0, "src"},
		{"no dest", "[template]\nsrc = \"a.tmpl\"\n", "missing", 0, "dest"},
		{"no template table", "src = \"a.tmpl\"\n", "unknown key", 1, "src"},
		{"wrong type", "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nuid = \"root\"\n", "", 4, ""},
		{"bad timeout", "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\ncheck_cmd_timeout = \"soon\"\n", "positive duration", 4, "check_cmd_timeout"},
		{"bad command template", "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nreload_cmd = \"x {{.src\"\n", "reload_cmd", 4, "reload_cmd"},
		{"unknown owner", "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nowner = \"no-such-user-here\"\n", "no such user", 4, "owner"},
		{"bad wait", "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nwait = \"5s:1s\"\n", "MAX >= MIN", 4, "wait"},
		{"syntax error", "[template]\nsrc = \"a.tmpl\ndest = \"/tmp/a\"\n", "", 2, ""},
		{"relative dest", "[template]\nsrc = \"a.tmpl\"\ndest = \"etc/a\"\n", "not an absolute path", 3, "dest"},
		{"uid beyond 32 bits", "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nuid = 4294967296\n", "largest uid", 4, "uid"},
		{"gid meaning none", "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\ngid = 4294967295\n", "largest gid", 4, "gid"},
		{"wait overflowing", "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\nwait = \"9223372036s\"\n", "too long", 4, "wait"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := confdir(t, map[string]string{
				"conf.d/r.toml":         c.toml,
				"templates/a.tmpl":      "ok",
				"templates/broken.tmpl": "line one\n{{ if }}\n",
			})
			file := filepath.Join(dir, "conf.d/r.toml")
			_, err := Load(file, LoadOptions{ConfDir: dir})
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("want a ConfigError, got %v", err)
			}
			if ce.File != file || !strings.Contains(err.Error(), file) {
				t.Errorf("error %q does not name %s", err, file)
			}
			if c.line != 0 && ce.Line != c.line {
				t.Errorf("error %q: line %d, want %d", err, ce.Line, c.line)
			}
			if c.key != "" && ce.Key != c.key {
				t.Errorf("error %q: key %q, want %q", err, ce.Key, c.key)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
		})
	}
}

// Two spellings of one file are one destination: resources sharing a
// file take turns on it only if their dests compare equal.
func TestDestIsCleaned(t *testing.T) {
	dir := confdir(t, map[string]string{
		"conf.d/a.toml":    "[template]\nsrc = \"a.tmpl\"\ndest = \"/etc/dsh/group/x\"\n",
		"conf.d/b.toml":    "[template]\nsrc = \"a.tmpl\"\ndest = \"/etc//dsh/./group/../group/x/\"\n",
		"templates/a.tmpl": "x",
	})
	resources, errs := LoadAll(LoadOptions{ConfDir: dir})
	if len(errs) > 0 || len(resources) != 2 {
		t.Fatalf("loaded %d resources, errors %v", len(resources), errs)
	}
	if resources[0].Dest != "/etc/dsh/group/x" || resources[1].Dest != resources[0].Dest {
		t.Fatalf("dests %q and %q, want both /etc/dsh/group/x", resources[0].Dest, resources[1].Dest)
	}
}

// A resource file or template that is a FIFO (or a device) is refused at
// once: reading it would block the load for ever, or never end.
func TestNonRegularFilesAreRefused(t *testing.T) {
	dir := confdir(t, map[string]string{
		"conf.d/a.toml":    "[template]\nsrc = \"fifo.tmpl\"\ndest = \"/tmp/a\"\n",
		"conf.d/b.toml":    "[template]\nsrc = \"../../../../../../../../../../dev/zero\"\ndest = \"/tmp/b\"\n",
		"templates/a.tmpl": "x",
	})
	for _, fifo := range []string{"templates/fifo.tmpl", "conf.d/c.toml"} {
		if err := syscall.Mkfifo(filepath.Join(dir, fifo), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan *Confdir)
	go func() {
		c, err := LoadConfdir(LoadOptions{ConfDir: dir})
		if err != nil {
			t.Error(err)
		}
		done <- c
	}()
	var c *Confdir
	select {
	case c = <-done:
	case <-time.After(time.Minute):
		t.Fatal("loading a confdir with a FIFO and /dev/zero hangs")
	}
	if len(c.Resources) != 0 || len(c.Errors) != 3 {
		t.Fatalf("loaded %v, errors %v", c.Resources, c.Errors)
	}
	for file, err := range c.Errors {
		if !strings.Contains(err.Error(), "not a regular file") || !strings.Contains(err.Error(), file) {
			t.Errorf("%s: %v", file, err)
		}
	}
}

func TestLoadAllSkipsBrokenFilesOnly(t *testing.T) {
	dir := confdir(t, map[string]string{
		"conf.d/good.toml":     "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/a\"\n",
		"conf.d/sub/also.toml": "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/b\"\n",
		"conf.d/bad.toml":      "[template]\nsrc = \"a.tmpl\"\ndest = \"/tmp/c\"\nbogus = 1\n",
		"conf.d/README":        "not a resource",
		"templates/a.tmpl":     "x",
	})
	resources, errs := LoadAll(LoadOptions{ConfDir: dir})
	if len(resources) != 2 || len(errs) != 1 {
		t.Fatalf("loaded %d, errors %v", len(resources), errs)
	}
	if _, errs := LoadAll(LoadOptions{ConfDir: t.TempDir()}); len(errs) != 1 || !strings.Contains(errs[0].Error(), "conf.d") {
		t.Fatalf("missing conf.d: %v", errs)
	}
}

func TestRootsAreMinimalAndSegmentAware(t *testing.T) {
	rs := []*Resource{
		{PrefixedKeys: []string{"/conftool/v1/pools/eqiad/appserver/apache2", "/conftool/v1/pools/codfw"}},
		{PrefixedKeys: []string{"/conftool/v1/pools/eqiad"}},
		{PrefixedKeys: []string{"/conftool/v1/poolsx"}},
	}
	got := strings.Join(Roots(rs), " ")
	if got != "/conftool/v1/pools/codfw /conftool/v1/pools/eqiad /conftool/v1/poolsx" {
		t.Fatalf("roots %s", got)
	}
}
