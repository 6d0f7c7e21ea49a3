package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/watch"
)

// loadResources loads conf.d and installs the result. A file that does not
// load keeps its previous version running, if there is one, and its error
// is reported; a file that is gone takes its resource with it. Every
// resource that loads is re-applied (an unchanged one costs a render and a
// comparison). The watcher follows the new set of roots, leaving roots that
// stay in the set alone.
func (a *Agent) loadResources() error {
	c, err := LoadConfdir(a.cfg.Load)
	if err != nil {
		return err
	}
	if err := a.checkRoots(c); err != nil {
		return err
	}
	for _, f := range c.Files {
		if err := c.Errors[f]; err != nil {
			a.logger.Error("resource file not loaded", "file", f, "err", err)
		}
	}

	a.mu.Lock()
	next := map[string]*resState{}
	for _, f := range c.Files {
		st := a.resources[f]
		r, ok := c.Resources[f]
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
	a.resources, a.loadErrs = next, c.Errors
	a.regroup()
	watching := a.cmdCtx != nil
	a.mu.Unlock()

	if watching {
		if err := a.watcher.SetRoots(a.roots(), a.loadCache()); err != nil {
			return err // checkRoots let through what SetRoots refuses: a bug
		}
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
	a.cfg.Notifier.Reloading("reloading conf.d and templates")
	if err := a.loadResources(); err != nil {
		a.logger.Error("reload failed; keeping every resource as it was", "err", err)
	}
	a.mu.Lock()
	ready := a.announcedReady
	a.mu.Unlock()
	if ready {
		a.cfg.Notifier.Ready(a.statusLine())
	} else {
		a.cfg.Notifier.Status(a.statusLine())
	}
}

// watchConfdir reloads resources when anything under conf.d/ or
// templates/ changes.
func (a *Agent) watchConfdir(ctx context.Context) {
	dirs := []string{filepath.Join(a.cfg.Load.ConfDir, "conf.d"), filepath.Join(a.cfg.Load.ConfDir, "templates")}
	watchPaths(ctx, a.logger, dirs, 250*time.Millisecond, a.Reload)
}

// checkRoots refuses a confdir whose keys one watch cannot follow (see
// watch.PrefixFor), naming the resource that reads the first such key.
func (a *Agent) checkRoots(c *Confdir) error {
	var keys []string
	for _, r := range c.Resources {
		keys = append(keys, r.PrefixedKeys...)
	}
	prefix := a.cfg.Watch.Prefix
	if prefix == "" {
		prefix = watch.CommonAncestor(backends.MinimalRoots(keys))
	}
	for _, f := range c.Files {
		if r, ok := c.Resources[f]; ok {
			if _, err := watch.PrefixFor(prefix, r.PrefixedKeys); err != nil {
				return fmt.Errorf("%s: %w", f, err)
			}
		}
	}
	return nil
}
