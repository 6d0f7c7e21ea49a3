// Package fileout replaces files so that a reader only ever sees the old
// file or the new one, complete, and so that an unchanged file is never
// touched at all.
//
// The sequence is: compare the rendered bytes, mode and owner with the
// destination; if anything differs, write a stage file in the destination's
// directory, fsync it, set its mode and owner (errors checked), let the
// caller check it, rename it over the destination and fsync the directory.
// Stage files are named after their destination and the writing process, so
// that ones left behind by a killed process can be found and removed.
package fileout

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Spec says what a destination file should be.
type Spec struct {
	Dest    string
	Content []byte
	// Mode of the file; 0 keeps the existing file's mode, or 0644 for a new one.
	Mode fs.FileMode
	// UID and GID; -1 keeps the existing file's owner, or the process's for
	// a new file.
	UID, GID int
}

// Plan is a Spec resolved against the destination as it is now.
type Plan struct {
	Spec
	// Path is where the file really goes: Dest, or its target when Dest is a
	// symbolic link (the link is kept).
	Path                                      string
	Exists                                    bool
	Old                                       []byte
	OldMode                                   fs.FileMode
	OldUID, OldGID                            int
	ContentChanged, ModeChanged, OwnerChanged bool
}

// Changed reports whether the destination must be rewritten.
func (p *Plan) Changed() bool { return p.ContentChanged || p.ModeChanged || p.OwnerChanged }

// Reasons names what differs, for logs.
func (p *Plan) Reasons() string {
	if !p.Exists {
		return "new file"
	}
	var r []string
	if p.ContentChanged {
		r = append(r, "content")
	}
	if p.ModeChanged {
		r = append(r, fmt.Sprintf("mode %04o->%04o", modeBits(p.OldMode), modeBits(p.Mode)))
	}
	if p.OwnerChanged {
		r = append(r, fmt.Sprintf("owner %d:%d->%d:%d", p.OldUID, p.OldGID, p.UID, p.GID))
	}
	return strings.Join(r, ", ")
}

// Inspect compares spec with the destination.
func Inspect(spec Spec) (*Plan, error) {
	p := &Plan{Spec: spec, Path: spec.Dest}
	if target, err := filepath.EvalSymlinks(spec.Dest); err == nil {
		p.Path = target
	}
	info, err := os.Stat(p.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if _, dirErr := os.Stat(filepath.Dir(p.Path)); dirErr != nil {
			return nil, fmt.Errorf("destination directory of %s: %w (create it first)", spec.Dest, dirErr)
		}
		p.resolveDefaults(0o644, os.Geteuid(), os.Getegid())
		p.ContentChanged = true
		return p, nil
	case err != nil:
		return nil, fmt.Errorf("inspect %s: %w", spec.Dest, err)
	case !info.Mode().IsRegular():
		return nil, fmt.Errorf("destination %s is not a regular file (%s)", spec.Dest, info.Mode().Type())
	}
	p.Exists = true
	p.OldMode = info.Mode()
	p.OldUID, p.OldGID = ownerOf(info)
	p.resolveDefaults(p.OldMode, p.OldUID, p.OldGID)
	if p.Old, err = os.ReadFile(p.Path); err != nil {
		return nil, fmt.Errorf("read %s: %w", spec.Dest, err)
	}
	p.ContentChanged = !bytes.Equal(p.Old, spec.Content)
	p.ModeChanged = modeBits(p.OldMode) != modeBits(p.Mode)
	p.OwnerChanged = p.OldUID != p.UID || p.OldGID != p.GID
	return p, nil
}

func (p *Plan) resolveDefaults(mode fs.FileMode, uid, gid int) {
	if p.Mode == 0 {
		p.Mode = mode
	}
	if p.UID < 0 {
		p.UID = uid
	}
	if p.GID < 0 {
		p.GID = gid
	}
}

// modeBits keeps permissions and the setuid, setgid and sticky bits.
func modeBits(m fs.FileMode) fs.FileMode {
	return m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

func ownerOf(info fs.FileInfo) (uid, gid int) {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid), int(st.Gid)
	}
	return -1, -1
}

// Staged is a complete stage file waiting to replace its destination.
type Staged struct {
	path string
	plan *Plan
}

// Path is the stage file, what a check command should read.
func (s *Staged) Path() string { return s.path }

// Stage writes the planned content to a stage file next to the destination,
// synced to disk, with the planned mode and owner.
func Stage(p *Plan) (*Staged, error) {
	path := stagePath(p.Path)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create stage file for %s: %w", p.Dest, err)
	}
	s := &Staged{path: path, plan: p}
	err = writeAll(f, p)
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("stage %s: %w", p.Dest, err)
	}
	return s, nil
}

func writeAll(f *os.File, p *Plan) error {
	if _, err := f.Write(p.Content); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := chownIfNeeded(f, p.UID, p.GID); err != nil {
		return err
	}
	// After chown: changing the owner clears setuid and setgid bits.
	if err := f.Chmod(modeBits(p.Mode)); err != nil {
		return err
	}
	return nil
}

func chownIfNeeded(f *os.File, uid, gid int) error {
	info, err := f.Stat()
	if err != nil {
		return err
	}
	curUID, curGID := ownerOf(info)
	if curUID == uid && curGID == gid {
		return nil
	}
	if err := f.Chown(uid, gid); err != nil {
		return fmt.Errorf("set owner %d:%d: %w", uid, gid, err)
	}
	return nil
}

// Commit renames the stage file over the destination and syncs the
// directory, so the rename survives a crash.
func (s *Staged) Commit() error {
	if err := os.Rename(s.path, s.plan.Path); err != nil {
		os.Remove(s.path)
		return fmt.Errorf("replace %s: %w", s.plan.Dest, err)
	}
	dir, err := os.Open(filepath.Dir(s.plan.Path))
	if err != nil {
		return fmt.Errorf("sync directory of %s: %w", s.plan.Dest, err)
	}
	defer dir.Close()
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("sync directory of %s: %w", s.plan.Dest, err)
	}
	return nil
}

// Remove deletes the stage file.
func (s *Staged) Remove() error {
	if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

const stageMarker = ".confsync-"

func stagePath(dest string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return filepath.Join(filepath.Dir(dest),
		"."+filepath.Base(dest)+stageMarker+strconv.Itoa(os.Getpid())+"-"+hex.EncodeToString(b))
}

// RemoveStale deletes stage files for dest left behind by processes that no
// longer exist (a kill -9 mid-write). Stage files of live processes, such as
// a concurrent one-shot render, are left alone. It returns the files removed.
func RemoveStale(dest string) ([]string, error) {
	if target, err := filepath.EvalSymlinks(dest); err == nil {
		dest = target
	}
	pattern := filepath.Join(filepath.Dir(dest), "."+filepath.Base(dest)+stageMarker+"*")
	matches, err := filepath.Glob(pattern)
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, m := range matches {
		pid, ok := stagePID(filepath.Base(m), filepath.Base(dest))
		if !ok || processAlive(pid) {
			continue
		}
		if err := os.Remove(m); err == nil {
			removed = append(removed, m)
		}
	}
	return removed, nil
}

func stagePID(name, destBase string) (int, bool) {
	rest := strings.TrimPrefix(name, "."+destBase+stageMarker)
	pidText, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidText)
	return pid, err == nil && pid > 0
}

func processAlive(pid int) bool {
	if pid == os.Getpid() {
		return true
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// WriteFile replaces path with data through the whole pipeline (stage file
// in the same directory, fsync, mode, rename, directory fsync), after
// sweeping stage files a killed writer left behind. An unchanged file is
// not touched. It is the way to save a state file.
func WriteFile(path string, data []byte, mode fs.FileMode) error {
	RemoveStale(path)
	plan, err := Inspect(Spec{Dest: path, Content: data, Mode: mode, UID: -1, GID: -1})
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if !plan.Changed() {
		return nil
	}
	staged, err := Stage(plan)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := staged.Commit(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
