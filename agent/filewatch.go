package agent

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// watchDataFiles re-reads every root soon after any of the file backend's
// files changes, so that -backend file follows edits as -watch promises
// rather than at the next resync. Directories are watched whole; for a
// file, its directory is watched, since editors and config management
// replace files by renaming new ones over them.
func (a *Agent) watchDataFiles(ctx context.Context) {
	if len(a.cfg.DataFiles) == 0 {
		return
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		a.logger.Error("cannot watch the data files; they are re-read every -resync-interval", "err", err)
		return
	}
	defer w.Close()
	for _, p := range a.cfg.DataFiles {
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
			debounce = time.After(100 * time.Millisecond)
		case <-w.Errors:
		case <-debounce:
			debounce = nil
			a.watcher.Resync()
		}
	}
}
