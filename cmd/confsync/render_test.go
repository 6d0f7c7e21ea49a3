package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/confsync/confsync/internal/etcdtest"
)

type runResult struct {
	code           int
	stdout, stderr string
}

func runCmd(t *testing.T, args ...string) runResult {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut)
	return runResult{code, out.String(), errOut.String()}
}

// writeConfdir writes files (paths relative to a new confdir) and returns
// the confdir; "{{out}}" in any file is replaced by a scratch output dir.
func writeConfdir(t *testing.T, files map[string]string) (dir, out string) {
	t.Helper()
	dir, out = t.TempDir(), t.TempDir()
	for name, text := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(text, "{{out}}", out)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir, out
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const poolTemplate = `{{range $h := ls "/pools/eqiad/app/web"}}{{$d := json (getv (printf "/pools/eqiad/app/web/%s" $h))}}{{$h}} {{$d.weight}}
{{end}}`

func seedPools(t *testing.T, srv *etcdtest.Server) {
	srv.Set(t, "/conftool/v1/pools/eqiad/app/web/mw1", `{"weight": 10, "pooled": "yes"}`)
	srv.Set(t, "/conftool/v1/pools/eqiad/app/web/mw2", `{"weight": 30, "pooled": "no"}`)
	srv.Set(t, "/conftool/v1/pools/codfw/app/web/mw3", `{"weight": 10, "pooled": "yes"}`)
	srv.Set(t, "/conftool/v1/discovery/app-rw/eqiad", `{"pooled": true, "references": [], "ttl": 300}`)
	srv.Set(t, "/unrelated/x", "y")
}

// Many resources over two subtrees cost two reads, whatever the number of
// resources and keys.
func TestRenderFetchesEachRootOnce(t *testing.T) {
	srv := etcdtest.New(t)
	seedPools(t, srv)
	proxy := etcdtest.NewProxy(t, srv.URL())
	files := map[string]string{"templates/pool.tmpl": poolTemplate,
		"templates/disc.tmpl": `{{$d := json (getv "/discovery/app-rw/eqiad")}}{{if $d.pooled}}UP{{else}}DOWN{{end}}/{{$d.ttl}}` + "\n"}
	for i := 0; i < 20; i++ {
		name := filepath.Join("conf.d", "pool"+string(rune('a'+i))+".toml")
		files[name] = "[template]\nsrc = \"pool.tmpl\"\ndest = \"{{out}}/pool" + string(rune('a'+i)) +
			"\"\nprefix = \"/conftool/v1\"\nkeys = [\"/pools/eqiad/app/web\", \"/pools/eqiad/app\"]\n"
	}
	files["conf.d/disc.toml"] = "[template]\nsrc = \"disc.tmpl\"\ndest = \"{{out}}/disc\"\nprefix = \"/conftool/v1\"\nkeys = [\"/discovery/app-rw\"]\n"
	dir, out := writeConfdir(t, files)

	res := runCmd(t, "render", "-confdir", dir, "-node", proxy.URL())
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if got := readFile(t, filepath.Join(out, "poolc")); got != "mw1 10\nmw2 30\n" {
		t.Fatalf("pool file %q", got)
	}
	if got := readFile(t, filepath.Join(out, "disc")); got != "UP/300\n" {
		t.Fatalf("discovery file %q", got)
	}
	if n := proxy.Count(nil); n != 2 {
		t.Fatalf("%d etcd requests for 2 distinct roots: %v", n, proxy.Requests())
	}
}

func TestMissingKeyIsEmptyNotAnError(t *testing.T) {
	srv := etcdtest.New(t)
	seedPools(t, srv)
	dir, out := writeConfdir(t, map[string]string{
		"conf.d/a.toml":    "[template]\nsrc = \"a.tmpl\"\ndest = \"{{out}}/a\"\nprefix = \"/conftool/v1\"\nkeys = [\"/pools/eqiad/app/web\", \"/pools/nowhere\"]\n",
		"templates/a.tmpl": `{{if exists "/pools/nowhere/x"}}yes{{else}}no{{end}} {{len (ls "/pools/eqiad/app/web")}}` + "\n",
	})
	res := runCmd(t, "render", "-confdir", dir, "-node", srv.URL())
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if got := readFile(t, filepath.Join(out, "a")); got != "no 2\n" {
		t.Fatalf("got %q", got)
	}
}

func TestGlobalPrefixAndKeyRerooting(t *testing.T) {
	srv := etcdtest.New(t)
	seedPools(t, srv)
	dir, out := writeConfdir(t, map[string]string{
		"conf.d/a.toml":    "[template]\nsrc = \"a.tmpl\"\ndest = \"{{out}}/a\"\nprefix = \"/wrong\"\nkeys = [\"/pools/codfw\"]\n",
		"templates/a.tmpl": `{{range gets "/pools/codfw/*/*/*"}}{{.Key}}{{end}}`,
	})
	res := runCmd(t, "render", "-confdir", dir, "-node", srv.URL(), "-prefix", "/conftool/v1")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if got := readFile(t, filepath.Join(out, "a")); got != "/pools/codfw/app/web/mw3" {
		t.Fatalf("got %q", got)
	}
}

func TestFailedCheckKeepsOldFileOthersStillRender(t *testing.T) {
	srv := etcdtest.New(t)
	seedPools(t, srv)
	dir, out := writeConfdir(t, map[string]string{
		"conf.d/a.toml": "[template]\nsrc = \"pool.tmpl\"\ndest = \"{{out}}/a\"\nprefix = \"/conftool/v1\"\nkeys = [\"/pools\"]\n" +
			"check_cmd = \"grep -q mw9 {{.src}}\"\n",
		"conf.d/b.toml":       "[template]\nsrc = \"pool.tmpl\"\ndest = \"{{out}}/b\"\nprefix = \"/conftool/v1\"\nkeys = [\"/pools\"]\n",
		"templates/pool.tmpl": poolTemplate,
	})
	os.WriteFile(filepath.Join(out, "a"), []byte("old\n"), 0o644)
	res := runCmd(t, "render", "-confdir", dir, "-node", srv.URL())
	if res.code != 1 {
		t.Fatalf("exit %d, want 1: %s", res.code, res.stderr)
	}
	if got := readFile(t, filepath.Join(out, "a")); got != "old\n" {
		t.Fatalf("failed check replaced the file: %q", got)
	}
	if !strings.Contains(res.stderr, "a.toml") || !strings.Contains(res.stderr, "check") {
		t.Fatalf("stderr does not name the resource and step: %s", res.stderr)
	}
	if got := readFile(t, filepath.Join(out, "b")); got != "mw1 10\nmw2 30\n" {
		t.Fatalf("other resource not rendered: %q", got)
	}
	assertNoStageFiles(t, out)

	// -keep-stage-file keeps the stage the check rejected.
	runCmd(t, "render", "-confdir", dir, "-node", srv.URL(), "-keep-stage-file")
	if n := len(stageFiles(t, out)); n != 1 {
		t.Fatalf("%d stage files kept, want 1", n)
	}
}

func TestReloadRunsOncePerDistinctCommand(t *testing.T) {
	srv := etcdtest.New(t)
	seedPools(t, srv)
	dir, out := writeConfdir(t, map[string]string{
		"conf.d/a.toml":       "[template]\nsrc = \"pool.tmpl\"\ndest = \"{{out}}/a\"\nprefix = \"/conftool/v1\"\nkeys = [\"/pools\"]\nreload_cmd = \"echo r >> {{out}}/reloads\"\n",
		"conf.d/b.toml":       "[template]\nsrc = \"pool.tmpl\"\ndest = \"{{out}}/b\"\nprefix = \"/conftool/v1\"\nkeys = [\"/pools\"]\nreload_cmd = \"echo r >> {{out}}/reloads\"\n",
		"conf.d/c.toml":       "[template]\nsrc = \"pool.tmpl\"\ndest = \"{{out}}/c\"\nprefix = \"/conftool/v1\"\nkeys = [\"/pools\"]\nreload_cmd = \"echo {{.dest}} >> {{out}}/reloads\"\n",
		"templates/pool.tmpl": poolTemplate,
	})
	if res := runCmd(t, "render", "-confdir", dir, "-node", srv.URL()); res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	want := "r\n" + filepath.Join(out, "c") + "\n"
	if got := readFile(t, filepath.Join(out, "reloads")); got != want {
		t.Fatalf("reloads %q, want %q", got, want)
	}
	// Nothing changed: nothing reloads.
	runCmd(t, "render", "-confdir", dir, "-node", srv.URL())
	if got := readFile(t, filepath.Join(out, "reloads")); got != want {
		t.Fatalf("unchanged files reloaded: %q", got)
	}
}

func TestFailedReloadExitsOne(t *testing.T) {
	srv := etcdtest.New(t)
	seedPools(t, srv)
	dir, out := writeConfdir(t, map[string]string{
		"conf.d/a.toml":       "[template]\nsrc = \"pool.tmpl\"\ndest = \"{{out}}/a\"\nprefix = \"/conftool/v1\"\nkeys = [\"/pools\"]\nreload_cmd = \"echo nope >&2; exit 4\"\n",
		"templates/pool.tmpl": poolTemplate,
	})
	res := runCmd(t, "render", "-confdir", dir, "-node", srv.URL())
	if res.code != 1 || !strings.Contains(res.stderr, "status 4") || !strings.Contains(res.stderr, "nope") {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if got := readFile(t, filepath.Join(out, "a")); got != "mw1 10\nmw2 30\n" {
		t.Fatalf("file not written before reload: %q", got)
	}
}

func TestHungCheckIsKilledAtItsTimeout(t *testing.T) {
	srv := etcdtest.New(t)
	seedPools(t, srv)
	dir, out := writeConfdir(t, map[string]string{
		"conf.d/a.toml": "[template]\nsrc = \"pool.tmpl\"\ndest = \"{{out}}/a\"\nprefix = \"/conftool/v1\"\nkeys = [\"/pools\"]\n" +
			"check_cmd = \"sleep 600\"\ncheck_cmd_timeout = \"1s\"\n",
		"templates/pool.tmpl": poolTemplate,
	})
	res := runCmd(t, "render", "-confdir", dir, "-node", srv.URL())
	if res.code != 1 || !strings.Contains(res.stderr, "timeout") {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "a")); !os.IsNotExist(err) {
		t.Fatal("file written although its check never passed")
	}
	assertNoStageFiles(t, out)
}

func TestEtcdUnreachableNamesEndpoints(t *testing.T) {
	srv := etcdtest.New(t)
	url := srv.URL()
	srv.Stop()
	dir, out := writeConfdir(t, map[string]string{
		"conf.d/a.toml":       "[template]\nsrc = \"pool.tmpl\"\ndest = \"{{out}}/a\"\nprefix = \"/conftool/v1\"\nkeys = [\"/pools\"]\n",
		"templates/pool.tmpl": poolTemplate,
	})
	os.WriteFile(filepath.Join(out, "a"), []byte("keep me\n"), 0o644)
	res := runCmd(t, "render", "-confdir", dir, "-node", url, "-node", "http://127.0.0.1:1")
	if res.code != 1 {
		t.Fatalf("exit %d, want 1: %s", res.code, res.stderr)
	}
	for _, want := range []string{url, "http://127.0.0.1:1", "unreachable"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("stderr does not mention %q: %s", want, res.stderr)
		}
	}
	if got := readFile(t, filepath.Join(out, "a")); got != "keep me\n" {
		t.Fatalf("file touched: %q", got)
	}
}

func TestBrokenResourceFileExitsTwoOthersRender(t *testing.T) {
	srv := etcdtest.New(t)
	seedPools(t, srv)
	dir, out := writeConfdir(t, map[string]string{
		"conf.d/good.toml":    "[template]\nsrc = \"pool.tmpl\"\ndest = \"{{out}}/good\"\nprefix = \"/conftool/v1\"\nkeys = [\"/pools\"]\n",
		"conf.d/bad.toml":     "[template]\nsrc = \"pool.tmpl\"\ndest = \"{{out}}/bad\"\nmode = \"0999\"\n",
		"templates/pool.tmpl": poolTemplate,
	})
	res := runCmd(t, "render", "-confdir", dir, "-node", srv.URL())
	if res.code != 2 || !strings.Contains(res.stderr, "bad.toml:4") || !strings.Contains(res.stderr, "mode") {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if got := readFile(t, filepath.Join(out, "good")); got == "" {
		t.Fatal("good resource not rendered")
	}
}

func TestNoopShowsDiffAndChangesNothing(t *testing.T) {
	srv := etcdtest.New(t)
	seedPools(t, srv)
	dir, out := writeConfdir(t, map[string]string{
		"conf.d/a.toml":       "[template]\nsrc = \"pool.tmpl\"\ndest = \"{{out}}/a\"\nprefix = \"/conftool/v1\"\nkeys = [\"/pools\"]\nreload_cmd = \"touch {{out}}/reloaded\"\n",
		"templates/pool.tmpl": poolTemplate,
	})
	os.WriteFile(filepath.Join(out, "a"), []byte("mw1 10\nmw2 20\n"), 0o644)
	res := runCmd(t, "render", "-confdir", dir, "-node", srv.URL(), "-noop")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if !strings.Contains(res.stdout, "-mw2 20\n+mw2 30\n") {
		t.Fatalf("no diff on stdout: %q", res.stdout)
	}
	if got := readFile(t, filepath.Join(out, "a")); got != "mw1 10\nmw2 20\n" {
		t.Fatalf("noop changed the file: %q", got)
	}
	if _, err := os.Stat(filepath.Join(out, "reloaded")); err == nil {
		t.Fatal("noop ran the reload command")
	}
	assertNoStageFiles(t, out)
}

func TestSyncOnlySkipsCommands(t *testing.T) {
	srv := etcdtest.New(t)
	seedPools(t, srv)
	dir, out := writeConfdir(t, map[string]string{
		"conf.d/a.toml": "[template]\nsrc = \"pool.tmpl\"\ndest = \"{{out}}/a\"\nprefix = \"/conftool/v1\"\nkeys = [\"/pools\"]\n" +
			"check_cmd = \"false\"\nreload_cmd = \"touch {{out}}/reloaded\"\n",
		"templates/pool.tmpl": poolTemplate,
	})
	if res := runCmd(t, "render", "-confdir", dir, "-node", srv.URL(), "-sync-only"); res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "reloaded")); err == nil {
		t.Fatal("-sync-only ran the reload command")
	}
	if readFile(t, filepath.Join(out, "a")) == "" {
		t.Fatal("file not written")
	}
}

func TestSingleTemplateMode(t *testing.T) {
	srv := etcdtest.New(t)
	seedPools(t, srv)
	tmplFile := filepath.Join(t.TempDir(), "pool.tmpl")
	os.WriteFile(tmplFile, []byte(poolTemplate), 0o644)
	res := runCmd(t, "render", "-template", tmplFile, "-prefix", "/conftool/v1", "-key", "/pools/eqiad", "-node", srv.URL())
	if res.code != 0 || res.stdout != "mw1 10\nmw2 30\n" {
		t.Fatalf("exit %d stdout %q stderr %s", res.code, res.stdout, res.stderr)
	}
	res = runCmd(t, "render", "-template", filepath.Join(t.TempDir(), "missing.tmpl"), "-node", srv.URL())
	if res.code != 2 || !strings.Contains(res.stderr, "missing.tmpl") {
		t.Fatalf("missing template: exit %d %s", res.code, res.stderr)
	}
}

func TestFileAndEnvBackends(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data.yaml")
	os.WriteFile(data, []byte("conftool:\n  v1:\n    pools:\n      eqiad:\n        app:\n          web:\n            mw1: '{\"weight\": 5, \"pooled\": \"yes\"}'\n"), 0o644)
	dir, out := writeConfdir(t, map[string]string{
		"conf.d/a.toml":       "[template]\nsrc = \"pool.tmpl\"\ndest = \"{{out}}/a\"\nprefix = \"/conftool/v1\"\nkeys = [\"/pools\"]\n",
		"conf.d/e.toml":       "[template]\nsrc = \"env.tmpl\"\ndest = \"{{out}}/e\"\nkeys = [\"/confsync/test\"]\n",
		"templates/pool.tmpl": poolTemplate,
		"templates/env.tmpl":  `{{getv "/confsync/test/value"}}`,
	})
	if res := runCmd(t, "render", "-confdir", dir, "-backend", "file", "-file", data, "-sync-only"); res.code != 1 {
		// e.toml reads an env key the file backend does not have: getv fails.
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if got := readFile(t, filepath.Join(out, "a")); got != "mw1 5\n" {
		t.Fatalf("file backend: %q", got)
	}
	t.Setenv("CONFSYNC_TEST_VALUE", "from-env")
	os.Remove(filepath.Join(dir, "conf.d/a.toml"))
	if res := runCmd(t, "render", "-confdir", dir, "-backend", "env"); res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if got := readFile(t, filepath.Join(out, "e")); got != "from-env" {
		t.Fatalf("env backend: %q", got)
	}
}

func TestSettingsFromEnvironmentAndConfigFile(t *testing.T) {
	srv := etcdtest.New(t)
	seedPools(t, srv)
	dir, out := writeConfdir(t, map[string]string{
		"conf.d/a.toml":       "[template]\nsrc = \"pool.tmpl\"\ndest = \"{{out}}/a\"\nkeys = [\"/pools\"]\n",
		"templates/pool.tmpl": poolTemplate,
	})
	cfg := filepath.Join(t.TempDir(), "confd.toml")
	os.WriteFile(cfg, []byte("nodes = [\"http://127.0.0.1:1\"]\nprefix = \"/conftool/v1\"\nconfdir = \""+dir+"\"\n"), 0o644)
	// The file's node is dead; CONFD_NODE (environment) beats it.
	t.Setenv("CONFD_NODE", srv.URL())
	if res := runCmd(t, "render", "-config-file", cfg); res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if got := readFile(t, filepath.Join(out, "a")); got != "mw1 10\nmw2 30\n" {
		t.Fatalf("got %q", got)
	}
	os.WriteFile(cfg, []byte("backend = \"etcd\"\nauth_token = \"x\"\n"), 0o644)
	if res := runCmd(t, "render", "-config-file", cfg); res.code != 2 || !strings.Contains(res.stderr, "auth_token") {
		t.Fatalf("unsupported key: exit %d %s", res.code, res.stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"render", "-bogus"},
		{"render", "-backend", "consul"},
		{"render", "-log-level", "loud"},
		{"render", "extra-arg"},
		{"nosuchcommand"},
	} {
		if res := runCmd(t, args...); res.code != 2 || res.stderr == "" {
			t.Errorf("%v: exit %d stderr %q", args, res.code, res.stderr)
		}
	}
	if res := runCmd(t, "render", "-confdir", t.TempDir()); res.code != 2 || !strings.Contains(res.stderr, "conf.d") {
		t.Errorf("missing conf.d: exit %d %s", res.code, res.stderr)
	}
}

func stageFiles(t *testing.T, dir string) []string {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(dir, ".*.confsync-*"))
	return matches
}

func assertNoStageFiles(t *testing.T, dir string) {
	t.Helper()
	if m := stageFiles(t, dir); len(m) > 0 {
		t.Fatalf("stage files left behind: %v", m)
	}
}
