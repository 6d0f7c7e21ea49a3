package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/confsync/confsync/agent/command"
	"github.com/confsync/confsync/agent/tmpl"
	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/internal/fileout"
	"github.com/confsync/confsync/internal/udiff"
)

// ErrorKind says at which step a resource failed.
type ErrorKind string

// The steps a resource can fail at.
const (
	KindFetch    ErrorKind = "fetch"
	KindTemplate ErrorKind = "template"
	KindWrite    ErrorKind = "write"
	KindCheck    ErrorKind = "check"
	KindReload   ErrorKind = "reload"
)

// Options control how resources are written.
type Options struct {
	// Noop renders and compares but changes nothing; differences go to Diff
	// as unified diffs.
	Noop bool
	// SyncOnly writes files but runs no check or reload command.
	SyncOnly bool
	// KeepStageFile keeps stage files that did not replace their
	// destination (a failed check, or -noop), for inspection.
	KeepStageFile bool
	// Diff receives -noop diffs; nil discards them.
	Diff   io.Writer
	Logger *slog.Logger
}

func (o *Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// Outcome is what processing a resource did.
type Outcome struct {
	Resource *Resource
	// Changed is true when the destination was (or, with -noop, would be)
	// rewritten.
	Changed bool
	Reasons string
	// Reload is the reload command still to run because the destination
	// changed; "" when none is due.
	Reload string
	Kind   ErrorKind
	Err    error
}

// Snapshots are the fetched roots, by root.
type Snapshots map[string]*backends.Snapshot

// For returns the snapshot whose root covers key, nil if none does.
func (s Snapshots) For(key string) *backends.Snapshot {
	var best *backends.Snapshot
	for root, snap := range s {
		if backends.Covers(root, key) && (best == nil || len(root) > len(best.Root)) {
			best = snap
		}
	}
	return best
}

// View builds the key store the resource's template reads: every leaf under
// each of its keys, with the prefix stripped and re-rooted at /, as confd
// presents them. A key with no snapshot or no leaves simply contributes
// nothing.
func (r *Resource) View(snaps Snapshots) *tmpl.Store {
	var pairs tmpl.KVPairs
	for _, key := range r.PrefixedKeys {
		snap := snaps.For(key)
		if snap == nil {
			continue
		}
		snap.Tree.Walk(key, func(k, v string) bool {
			pairs = append(pairs, tmpl.KVPair{Key: path.Join("/", strings.TrimPrefix(k, r.Prefix)), Value: v})
			return true
		})
	}
	return tmpl.NewStoreFromPairs(pairs)
}

// Render executes the template over store, to memory.
func (r *Resource) Render(store *tmpl.Store) ([]byte, error) {
	var buf bytes.Buffer
	if err := r.Template.Execute(&buf, store); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Apply renders the resource and, when the result differs from the
// destination, stages it, checks it and moves it into place. It does not run
// the reload command: the caller runs Outcome.Reload, once per distinct
// command, after a batch. On any failure the destination is left as it was
// and no stage file remains (unless KeepStageFile asks for one).
func (r *Resource) Apply(ctx context.Context, store *tmpl.Store, opts Options) Outcome {
	out := Outcome{Resource: r}
	content, err := r.Render(store)
	if err != nil {
		return out.fail(KindTemplate, err)
	}
	if r.MakeDirs {
		if err := os.MkdirAll(filepath.Dir(r.Dest), 0o755); err != nil {
			return out.fail(KindWrite, err)
		}
	}
	// Stage files are only left behind by a killed process: sweep once
	// per loaded resource, not on every render.
	r.sweep.Do(func() { fileout.RemoveStale(r.Dest) })
	plan, err := fileout.Inspect(fileout.Spec{Dest: r.Dest, Content: content, Mode: r.Mode, UID: r.UID, GID: r.GID})
	if err != nil {
		return out.fail(KindWrite, err)
	}
	if !plan.Changed() {
		return out
	}
	out.Changed, out.Reasons = true, plan.Reasons()
	if opts.Noop {
		return r.noop(plan, out, opts)
	}
	staged, err := fileout.Stage(plan)
	if err != nil {
		return out.fail(KindWrite, err)
	}
	if err := r.check(ctx, staged, opts); err != nil {
		if opts.KeepStageFile {
			opts.logger().Warn("stage file kept after failed check", "resource", r.Name, "stage", staged.Path())
		} else {
			staged.Remove()
		}
		return out.fail(KindCheck, err)
	}
	if err := staged.Commit(); err != nil {
		return out.fail(KindWrite, err)
	}
	opts.logger().Info("target config updated", "resource", r.Name, "dest", r.Dest, "changed", out.Reasons)
	if r.ReloadCmd != nil && !opts.SyncOnly {
		if out.Reload, err = r.commandLine(r.ReloadCmd, r.Dest); err != nil {
			return out.fail(KindReload, err)
		}
	}
	return out
}

func (o Outcome) fail(kind ErrorKind, err error) Outcome {
	o.Kind, o.Err = kind, err
	return o
}

func (r *Resource) noop(plan *fileout.Plan, out Outcome, opts Options) Outcome {
	if opts.Diff != nil {
		fmt.Fprintf(opts.Diff, "# %s: %s would change (%s)\n", r.Name, r.Dest, out.Reasons)
		if plan.ContentChanged {
			io.WriteString(opts.Diff, udiff.Diff(r.Dest, r.Dest+" (rendered)", plan.Old, plan.Content, 3))
		}
	}
	if opts.KeepStageFile {
		if staged, err := fileout.Stage(plan); err == nil {
			opts.logger().Info("noop: stage file kept", "resource", r.Name, "stage", staged.Path())
		}
	}
	return out
}

func (r *Resource) check(ctx context.Context, staged *fileout.Staged, opts Options) error {
	if r.CheckCmd == nil || opts.SyncOnly {
		return nil
	}
	line, err := r.commandLine(r.CheckCmd, staged.Path())
	if err != nil {
		return err
	}
	res, err := command.Run(ctx, line, r.CheckTimeout, nil)
	if err != nil {
		return fmt.Errorf("config check for %s failed: %w", r.Dest, err)
	}
	opts.logger().Debug("check passed", "resource", r.Name, "command", line, "duration", res.Duration)
	return nil
}

// Reloads collects the reload commands a batch of outcomes made due, so
// that resources sharing a command run it once.
type Reloads struct {
	lines   []string
	timeout map[string]time.Duration
	waiting map[string][]int // outcome indexes per command
}

// Add records outcome i's reload command, if it has one.
func (rl *Reloads) Add(i int, o Outcome) {
	if o.Reload == "" || o.Err != nil {
		return
	}
	if rl.timeout == nil {
		rl.timeout, rl.waiting = map[string]time.Duration{}, map[string][]int{}
	}
	if _, seen := rl.timeout[o.Reload]; !seen {
		rl.lines = append(rl.lines, o.Reload)
	}
	rl.timeout[o.Reload] = max(rl.timeout[o.Reload], o.Resource.ReloadTimeout)
	rl.waiting[o.Reload] = append(rl.waiting[o.Reload], i)
}

// Run runs each command once, in the order first seen, and marks the
// outcomes of a failed command with the error.
func (rl *Reloads) Run(ctx context.Context, outcomes []Outcome, logger *slog.Logger) {
	for _, line := range rl.lines {
		res, err := command.Run(ctx, line, rl.timeout[line], nil)
		if err != nil {
			err = fmt.Errorf("reload failed: %w", err)
			logger.Error("reload failed", "command", line, "err", err)
		} else {
			logger.Info("reloaded", "command", line, "duration", res.Duration)
		}
		for _, i := range rl.waiting[line] {
			if err != nil {
				outcomes[i] = outcomes[i].fail(KindReload, err)
			} else {
				outcomes[i].Reload = ""
			}
		}
	}
}
