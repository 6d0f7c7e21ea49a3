package fileout

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func commit(t *testing.T, spec Spec) *Plan {
	t.Helper()
	p, err := Inspect(spec)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Changed() {
		return p
	}
	s, err := Stage(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}
	return p
}

func inode(t *testing.T, path string) uint64 {
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return info.Sys().(*syscall.Stat_t).Ino
}

func TestUnchangedFileIsNotTouched(t *testing.T) {
	dest := filepath.Join(t.TempDir(), "pool")
	commit(t, Spec{Dest: dest, Content: []byte("a\n"), Mode: 0o444, UID: -1, GID: -1})
	before := inode(t, dest)
	p := commit(t, Spec{Dest: dest, Content: []byte("a\n"), Mode: 0o444, UID: -1, GID: -1})
	if p.Changed() {
		t.Fatalf("identical render planned a change: %s", p.Reasons())
	}
	if inode(t, dest) != before {
		t.Fatal("unchanged file was rewritten")
	}
}

func TestChangeReplacesAtomicallyWithModeAndNoStageLeft(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, "pool")
	commit(t, Spec{Dest: dest, Content: []byte("old\n"), Mode: 0o644, UID: -1, GID: -1})
	before := inode(t, dest)
	p := commit(t, Spec{Dest: dest, Content: []byte("new\n"), Mode: 0o440, UID: -1, GID: -1})
	if !p.ContentChanged || !p.ModeChanged {
		t.Fatalf("plan %s", p.Reasons())
	}
	got, _ := os.ReadFile(dest)
	info, _ := os.Stat(dest)
	if string(got) != "new\n" || info.Mode().Perm() != 0o440 {
		t.Fatalf("dest %q mode %v", got, info.Mode())
	}
	if inode(t, dest) == before {
		t.Fatal("file was modified in place instead of replaced")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("stray files left: %v", entries)
	}
}

func TestModeOnlyChangeIsAChange(t *testing.T) {
	dest := filepath.Join(t.TempDir(), "f")
	commit(t, Spec{Dest: dest, Content: []byte("x"), Mode: 0o644, UID: -1, GID: -1})
	p := commit(t, Spec{Dest: dest, Content: []byte("x"), Mode: 0o600, UID: -1, GID: -1})
	if p.ContentChanged || !p.ModeChanged {
		t.Fatalf("plan %s", p.Reasons())
	}
	// Mode 0 keeps whatever the file has.
	if p := commit(t, Spec{Dest: dest, Content: []byte("x"), UID: -1, GID: -1}); p.Changed() {
		t.Fatalf("unset mode changed the file: %s", p.Reasons())
	}
}

func TestOwnerIsSetAndCompared(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another user needs root (CI runs as root)")
	}
	dest := filepath.Join(t.TempDir(), "f")
	commit(t, Spec{Dest: dest, Content: []byte("x"), Mode: 0o644, UID: -1, GID: -1})
	p := commit(t, Spec{Dest: dest, Content: []byte("x"), Mode: 0o644, UID: 65534, GID: 65534})
	if !p.OwnerChanged {
		t.Fatal("owner change not planned")
	}
	info, _ := os.Stat(dest)
	st := info.Sys().(*syscall.Stat_t)
	if st.Uid != 65534 || st.Gid != 65534 {
		t.Fatalf("owner %d:%d", st.Uid, st.Gid)
	}
	// Unset owner keeps the existing one.
	if p := commit(t, Spec{Dest: dest, Content: []byte("y"), Mode: 0o644, UID: -1, GID: -1}); p.OwnerChanged {
		t.Fatal("unset owner changed the owner")
	}
	info, _ = os.Stat(dest)
	if info.Sys().(*syscall.Stat_t).Uid != 65534 {
		t.Fatal("rewrite lost the owner")
	}
}

func TestChownFailureIsAnError(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root may chown to anyone")
	}
	dest := filepath.Join(t.TempDir(), "f")
	p, err := Inspect(Spec{Dest: dest, Content: []byte("x"), UID: 0, GID: 0})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Stage(p); err == nil || !strings.Contains(err.Error(), "owner") {
		t.Fatalf("chown to root as non-root: %v", err)
	}
}

func TestSymlinkedDestKeepsTheLink(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real.conf")
	link := filepath.Join(dir, "link.conf")
	os.WriteFile(real, []byte("old"), 0o644)
	os.Symlink(real, link)
	commit(t, Spec{Dest: link, Content: []byte("new"), UID: -1, GID: -1})
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("symlink replaced by a regular file")
	}
	if got, _ := os.ReadFile(real); string(got) != "new" {
		t.Fatalf("link target holds %q", got)
	}
}

func TestMissingDirectoryIsAClearError(t *testing.T) {
	_, err := Inspect(Spec{Dest: "/nonexistent-dir/x/pool", Content: []byte("x"), UID: -1, GID: -1})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent-dir/x/pool") || !strings.Contains(err.Error(), "create it") {
		t.Fatalf("error %v", err)
	}
}

func TestDestThatIsADirectoryIsRefused(t *testing.T) {
	dest := t.TempDir()
	if _, err := Inspect(Spec{Dest: dest, Content: []byte("x"), UID: -1, GID: -1}); err == nil {
		t.Fatal("directory accepted as destination")
	}
}

func TestRemoveStaleOnlyRemovesDeadWriters(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, "pool")
	cmd := exec.Command("true")
	cmd.Run()
	deadPID := cmd.Process.Pid
	dead := filepath.Join(dir, ".pool"+stageMarker+strconv.Itoa(deadPID)+"-abc")
	live := filepath.Join(dir, ".pool"+stageMarker+strconv.Itoa(os.Getpid())+"-def")
	other := filepath.Join(dir, ".poolx"+stageMarker+strconv.Itoa(deadPID)+"-abc")
	for _, f := range []string{dead, live, other} {
		os.WriteFile(f, []byte("partial"), 0o600)
	}
	removed, err := RemoveStale(dest)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != dead {
		t.Fatalf("removed %v, want only %s", removed, dead)
	}
	for _, f := range []string{live, other} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%s was removed", f)
		}
	}
}
