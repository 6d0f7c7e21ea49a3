package cliconfig

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func newFlags() (*flag.FlagSet, *string, *Strings, *bool) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	backend := fs.String("backend", "etcd", "")
	var nodes Strings
	fs.Var(&nodes, "node", "")
	noop := fs.Bool("noop", false, "")
	return fs, backend, &nodes, noop
}

var layers = Layers{
	FileKeys:    map[string]string{"backend": "backend", "nodes": "node", "noop": "noop"},
	Unsupported: map[string]string{"table": "the dynamodb backend is not supported"},
	EnvPrefixes: []string{"CONFSYNC_", "CONFD_"},
}

func TestPrecedence(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "confd.toml")
	os.WriteFile(cfg, []byte("backend = \"file\"\nnodes = [\"http://file:1\", \"http://file:2\"]\nnoop = true\n"), 0o644)
	env := map[string]string{}
	l := layers
	l.LookupEnv = func(k string) (string, bool) { v, ok := env[k]; return v, ok }

	// File only.
	fs, backend, nodes, noop := newFlags()
	fs.Parse(nil)
	if err := l.Apply(fs, cfg); err != nil {
		t.Fatal(err)
	}
	if *backend != "file" || !reflect.DeepEqual([]string(*nodes), []string{"http://file:1", "http://file:2"}) || !*noop {
		t.Fatalf("file layer: %s %v %v", *backend, *nodes, *noop)
	}

	// Environment beats the file; CONFSYNC_ beats CONFD_.
	env["CONFD_BACKEND"] = "env"
	env["CONFSYNC_NODE"] = "http://env:1,http://env:2"
	fs, backend, nodes, _ = newFlags()
	fs.Parse(nil)
	l.Apply(fs, cfg)
	if *backend != "env" || !reflect.DeepEqual([]string(*nodes), []string{"http://env:1", "http://env:2"}) {
		t.Fatalf("env layer: %s %v", *backend, *nodes)
	}

	// Flags beat everything, even when they repeat the default.
	fs, backend, nodes, noop = newFlags()
	fs.Parse([]string{"-backend", "etcd", "-node", "http://flag:1", "-noop=false"})
	l.Apply(fs, cfg)
	if *backend != "etcd" || !reflect.DeepEqual([]string(*nodes), []string{"http://flag:1"}) || *noop {
		t.Fatalf("flag layer: %s %v %v", *backend, *nodes, *noop)
	}
}

func TestFileIsStrict(t *testing.T) {
	dir := t.TempDir()
	for text, want := range map[string]string{
		"bakend = \"etcd\"\n": `unknown key "bakend"`,
		"table = \"x\"\n":     "dynamodb",
		"nodes = [1, 2]\n":    `key "nodes"`,
		"backend = \"etcd\n":  "confd.toml",
	} {
		cfg := filepath.Join(dir, "confd.toml")
		os.WriteFile(cfg, []byte(text), 0o644)
		fs, _, _, _ := newFlags()
		fs.Parse(nil)
		err := layers.Apply(fs, cfg)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), cfg) {
			t.Errorf("%q: error %v, want it to mention %q and the file", text, err, want)
		}
	}
}

func TestBadEnvValueNamesTheVariable(t *testing.T) {
	l := layers
	l.LookupEnv = func(k string) (string, bool) { return "maybe", k == "CONFD_NOOP" }
	fs, _, _, _ := newFlags()
	fs.Parse(nil)
	if err := l.Apply(fs, ""); err == nil || !strings.Contains(err.Error(), "CONFD_NOOP") {
		t.Fatalf("error %v", err)
	}
}
