package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// `confsync version` and `confsync -version` print the same: the version,
// the revision (or why there is none) and the Go version.
func TestVersionCommand(t *testing.T) {
	res := runCmd(t, "version")
	if res.code != 0 || !strings.HasPrefix(res.stdout, "confsync ") {
		t.Fatalf("version: exit %d %q", res.code, res.stdout)
	}
	for _, alias := range []string{"-version", "--version"} {
		if other := runCmd(t, alias); other.code != 0 || other.stdout != res.stdout {
			t.Errorf("%s: exit %d %q, want %q", alias, other.code, other.stdout, res.stdout)
		}
	}
	for _, want := range []string{"revision", runtime.Version(), runtime.GOOS + "/" + runtime.GOARCH} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("version lacks %q:\n%s", want, res.stdout)
		}
	}
	if res := runCmd(t, "version", "extra"); res.code != 2 {
		t.Errorf("version extra: exit %d, want 2", res.code)
	}
}

// A binary built the way scripts/deb.sh builds it reports the release
// version given to the linker and the commit it was built from.
func TestVersionOfAReleaseBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("not in a git checkout git can read: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "confsync")
	build := exec.Command("go", "build", "-trimpath", "-buildvcs=true", "-ldflags", "-X main.version=1.2.3~rc1", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(out), "\n")
	if lines[0] != "confsync 1.2.3~rc1" {
		t.Errorf("first line %q", lines[0])
	}
	if !strings.Contains(lines[1], "revision  "+strings.TrimSpace(string(head))+" (committed ") {
		t.Errorf("revision line %q, want HEAD %s", lines[1], head)
	}
}

// Without a linker version, the module version stands in; a build from a
// working tree (as this test's) says devel.
func TestVersionFallsBackToTheModuleVersion(t *testing.T) {
	if b := readBuildInfo(); b.Version != "devel" && !strings.HasPrefix(b.Version, "v") {
		t.Errorf("version %q, want devel or a module version", b.Version)
	}
}
