package main

import (
	"context"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/fixture"
	"github.com/confsync/confsync/internal/udiff"
)

var update = flag.Bool("update", false, "rewrite golden files from the current output")

// exampleConfdir is the ready example at the repository root.
const exampleConfdir = "../.."

// loadSite starts etcd holding the generated conftool tree the example
// renders from.
func loadSite(t *testing.T) *etcdtest.Server {
	t.Helper()
	srv := etcdtest.New(t)
	if err := fixture.Generate(fixture.Options{Seed: 1}).Load(context.Background(), srv.Client()); err != nil {
		t.Fatal(err)
	}
	return srv
}

// TestExampleConfdirMatchesGoldenFiles renders every resource of the
// example confdir from the fixture site and compares each file, byte for
// byte, with testdata/example (go test -update rewrites them).
func TestExampleConfdirMatchesGoldenFiles(t *testing.T) {
	srv := loadSite(t)
	out := t.TempDir()
	res := runCmd(t, "render", "-confdir", exampleConfdir, "-node", srv.URL(), "-dest-root", out)
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	golden := filepath.Join("testdata", "example")
	got := collect(t, out)
	if *update {
		os.RemoveAll(golden)
		for rel, content := range got {
			p := filepath.Join(golden, rel)
			os.MkdirAll(filepath.Dir(p), 0o755)
			os.WriteFile(p, []byte(content), 0o644)
		}
		return
	}
	want := collect(t, golden)
	for rel, content := range want {
		if got[rel] != content {
			t.Errorf("%s differs from its golden file:\n%s", rel, udiff.Diff("golden", "rendered", []byte(content), []byte(got[rel]), 3))
		}
	}
	for rel := range got {
		if _, ok := want[rel]; !ok {
			t.Errorf("%s rendered but has no golden file (run go test -update)", rel)
		}
	}
	resources, _ := filepath.Glob(filepath.Join(exampleConfdir, "conf.d", "*.toml"))
	if len(got) != len(resources) {
		t.Errorf("%d files for %d resources", len(got), len(resources))
	}
}

// Each check_cmd of the example rejects what production's check rejects.
func TestExampleChecksRejectBadData(t *testing.T) {
	srv := loadSite(t)
	out := t.TempDir()
	if res := runCmd(t, "render", "-confdir", exampleConfdir, "-node", srv.URL(), "-dest-root", out); res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	// Both datacenters UP for an active/passive service; and an empty pool.
	srv.Set(t, fixture.Prefix+"/discovery/appservers-rw/codfw", fixture.DiscoveryValue(true, 300))
	srv.Delete(t, fixture.Prefix+"/pools/esams/cache_text/cdn")
	res := runCmd(t, "render", "-confdir", exampleConfdir, "-node", srv.URL(), "-dest-root", out)
	if res.code != 1 {
		t.Fatalf("exit %d, want 1: %s", res.code, res.stderr)
	}
	for _, want := range []string{"more than one datacenter is UP", "server pool cannot be empty"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, res.stderr)
		}
	}
	state := readFile(t, filepath.Join(out, "var/lib/gdnsd/discovery-appservers-rw.state"))
	if strings.Count(state, "UP/") != 1 {
		t.Fatalf("rejected state was written:\n%s", state)
	}
}

func collect(t *testing.T, root string) map[string]string {
	t.Helper()
	files := map[string]string{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		b, _ := os.ReadFile(p)
		files[rel] = string(b)
		return nil
	})
	return files
}
