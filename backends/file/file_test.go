package file

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func write(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestYAMLFlattensLikeConfd(t *testing.T) {
	dir := t.TempDir()
	f := write(t, dir, "site.yaml", `
conftool:
  v1:
    pools:
      eqiad:
        mw1: '{"weight": 10, "pooled": "yes"}'
    flags:
      enabled: true
      weight: 10
      ratio: 0.5
      none: ~
      hosts: [a, b]
`)
	snap, err := (&Source{Paths: []string{f}}).Fetch(context.Background(), "/conftool/v1")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"/conftool/v1/pools/eqiad/mw1": `{"weight": 10, "pooled": "yes"}`,
		"/conftool/v1/flags/enabled":   "true",
		"/conftool/v1/flags/weight":    "10",
		"/conftool/v1/flags/ratio":     "0.5",
		"/conftool/v1/flags/none":      "",
		"/conftool/v1/flags/hosts/0":   "a",
		"/conftool/v1/flags/hosts/1":   "b",
	}
	if got := snap.Tree.Leaves("/"); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
}

func TestJSONAndDirectoriesAndOrder(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a/1.json", `{"app": {"port": 8080, "name": "x", "big": 12345678901234567890}}`)
	write(t, dir, "a/2.yaml", "app:\n  name: y\n")
	write(t, dir, "a/skip.txt", "app: {name: z}")
	src := &Source{Paths: []string{filepath.Join(dir, "a")}, Filter: "*.*[ny]*"}
	snap, err := src.Fetch(context.Background(), "/app")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"/app/port": "8080", "/app/name": "y", "/app/big": "12345678901234567890"}
	if got := snap.Tree.Leaves("/"); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestBadFilesNameTheFile(t *testing.T) {
	dir := t.TempDir()
	bad := write(t, dir, "bad.yaml", "a: [unclosed\n")
	_, err := (&Source{Paths: []string{bad}}).Fetch(context.Background(), "/")
	if err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("error %v does not name %s", err, bad)
	}
	_, err = (&Source{Paths: []string{filepath.Join(dir, "missing.yaml")}}).Fetch(context.Background(), "/")
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("missing file: %v", err)
	}
	badJSON := write(t, dir, "bad.json", "{")
	if _, err := (&Source{Paths: []string{badJSON}}).Fetch(context.Background(), "/"); err == nil {
		t.Fatal("broken JSON accepted")
	}
}
