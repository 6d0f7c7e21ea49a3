package agent

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// loadResources loads conf.d and installs the result. A file that does not
// load keeps its previous version running, if there is one, and its error
// is reported; a file that is gone takes its resource with it. Every
// resource that loads is re-applied (an unchanged one costs a render and a
// comparison). The watcher follows the new set of roots, leaving roots that
// stay in the set alone.
func (a *Agent) loadResources() error {
	files, err := ResourceFiles(a.cfg.Load.ConfDir)
	if err != nil {
		return err
	}
	loaded := map[string]*Resource{}
	errs := map[string]error{}
	for _, f := range files {
		r, err := Load(f, a.cfg.Load)
		if err != nil {
			errs[f] = err
			a.logger.Error("resource file not loaded", "file", f, "err", err)
			continue
		}
		loaded[f] = r
	}

	a.mu.Lock()
	next := map[string]*resState{}
	for _, f := range files {
		st := a.resources[f]
		r, ok := loaded[f]
		switch {
		case ok && st == nil:
			st = &resState{res: r, dirty: true}
		case ok:
			st.res, st.dirty, st.nextRetry = r, true, time.Time{}
		case st != nil:
			a.logger.Warn("keeping the previous version of a resource whose file no longer loads", "file", f)
		default:
			continue
		}
		next[f] = st
	}
	a.resources, a.loadErrs = next, errs
	a.regroup()
	watching := a.cmdCtx != nil
	a.mu.Unlock()

	if watching {
		roots := a.roots()
		a.watcher.SetRoots(roots, a.loadCache())
		a.mu.Lock()
		for _, st := range a.resources {
			a.enqueue(st.group)
		}
		a.mu.Unlock()
	}
	return nil
}

// regroup puts resources sharing a reload command in one group, keeping
// the state of groups that survive. Caller holds a.mu.
func (a *Agent) regroup() {
	old := a.groups
	a.groups = map[string]*group{}
	files := make([]string, 0, len(a.resources))
	for f := range a.resources {
		files = append(files, f)
	}
	sort.Strings(files)
	for _, f := range files {
		st := a.resources[f]
		key := "file:" + f
		if text := strings.TrimSpace(st.res.reloadCmdText); text != "" {
			key = "reload:" + text
		}
		g, ok := a.groups[key]
		if !ok {
			if g = old[key]; g == nil {
				g = &group{key: key}
			}
			g.members = nil
			a.groups[key] = g
		}
		g.members = append(g.members, st)
		st.group = g
	}
	for key, g := range old {
		if _, ok := a.groups[key]; !ok && g.timer != nil {
			g.timer.Stop()
		}
	}
}

// Reload re-reads conf.d and templates/, as SIGHUP asks.
func (a *Agent) Reload() {
	a.logger.Info("reloading resources")
	if err := a.loadResources(); err != nil {
		a.logger.Error("reload failed; keeping every resource as it was", "err", err)
	}
}

// watchConfdir reloads resources when anything under conf.d/ or templates/
// changes, a quarter second after the last change (editors and config
// management write files in several steps).
func (a *Agent) watchConfdir(ctx context.Context) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		a.logger.Error("cannot watch the confdir; use SIGHUP to reload", "err", err)
		return
	}
	defer w.Close()
	for _, sub := range []string{"conf.d", "templates"} {
		addTree(w, filepath.Join(a.cfg.Load.ConfDir, sub))
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
			debounce = time.After(250 * time.Millisecond)
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			a.logger.Warn("confdir watch error", "err", err)
		case <-debounce:
			debounce = nil
			a.Reload()
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
