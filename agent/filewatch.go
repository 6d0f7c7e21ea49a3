package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// watchDataFiles re-reads every root soon after any of the file backend's
// files changes, so that -backend file follows edits as -watch promises
// rather than at the next resync.
func (a *Agent) watchDataFiles(ctx context.Context) {
	if len(a.cfg.DataFiles) > 0 {
		watchPaths(ctx, a.logger, a.cfg.DataFiles, 100*time.Millisecond, a.watcher.Resync)
	}
}

// watchPaths calls onChange once changes under paths have settled for the
// given time (editors and config management write files in several steps).
// Directories are watched with everything below them, including
// directories created later; for a file, its directory is watched, since
// files are often replaced by renaming a new one over them.
func watchPaths(ctx context.Context, logger *slog.Logger, paths []string, settle time.Duration, onChange func()) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		logger.Error("cannot watch files for changes; send SIGHUP instead", "paths", paths, "err", err)
		return
	}
	defer w.Close()
	for _, p := range paths {
		if info, err := os.Stat(p); err == nil && info.IsDir() {
			addTree(w, p)
		} else {
			w.Add(filepath.Dir(p))
		}
	}
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if ev.Op&fsnotify.Create != 0 {
				if info, err := os.Stat(ev.Name); err == nil && info.IsDir() {
					addTree(w, ev.Name)
				}
			}
			debounce = time.After(settle)
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			logger.Warn("file watch error", "err", err)
		case <-debounce:
			debounce = nil
			onChange()
		}
	}
}

func addTree(w *fsnotify.Watcher, root string) {
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			w.Add(p)
		}
		return nil
	})
}
