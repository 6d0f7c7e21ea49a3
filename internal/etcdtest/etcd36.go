package etcdtest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// NewEtcd36 starts an n-member etcd 3.6 cluster as processes, like
// NewProcessCluster, for tests of v3 paths against the etcd version that
// has no v2 API at all. WatcherCount does not apply to it.
//
// The binary is built from the separate module in internal/etcd36 (a Go
// module holds one version of the etcd server, and confsync's is 3.5);
// see Etcd36Binary.
func NewEtcd36(tb testing.TB, n int) *ProcessCluster {
	tb.Helper()
	return NewProcessCluster(tb, n, ProcessOptions{
		Binary: Etcd36Binary(tb),
		Args:   []string{"--unsafe-no-fsync"},
	})
}

// Etcd36Binary returns the path of an etcd 3.6 binary built from
// internal/etcd36, building it when needed.
//
// The binary goes to a directory under os.TempDir named after a hash of
// the module's files and the Go version, so every test process and every
// run until the module changes shares one build, and stale builds do not
// pile up. The first build downloads and compiles etcd 3.6 (a minute or
// more); later ones cost a stat.
func Etcd36Binary(tb testing.TB) string {
	tb.Helper()
	path, err := etcd36Binary(tb.Logf)
	if err != nil {
		tb.Fatalf("etcdtest: build etcd 3.6: %v", err)
	}
	return path
}

func etcd36Binary(logf func(format string, args ...any)) (string, error) {
	src, err := etcd36Dir()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintln(h, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	for _, name := range []string{"go.mod", "go.sum", "main.go"} {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", name, len(b))
		h.Write(b)
	}
	dir := filepath.Join(os.TempDir(), "confsync-etcd36-"+hex.EncodeToString(h.Sum(nil))[:16])
	bin := filepath.Join(dir, "etcd36")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("the go command is needed to build %s: %w", src, err)
	}
	// Several test processes may build at once: each writes its own file
	// and renames it into place, which is atomic.
	tmp, err := os.CreateTemp(dir, "etcd36-*.tmp")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	cmd := exec.Command(goTool, "build", "-C", src, "-o", tmp.Name(), ".")
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly -buildvcs=false")
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build -C %s: %w\n%s", src, err, out)
	}
	if err := os.Rename(tmp.Name(), bin); err != nil {
		return "", err
	}
	logf("etcdtest: built %s in %s", bin, time.Since(start).Round(time.Second))
	return bin, nil
}

// etcd36Dir is internal/etcd36, found from this source file: tests run
// with the package directory as working directory, which differs from
// package to package.
func etcd36Dir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("cannot locate the etcdtest source directory")
	}
	dir := filepath.Join(filepath.Dir(file), "..", "etcd36")
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("the etcd 3.6 module is not where etcdtest expects it: %w", err)
	}
	return dir, nil
}
