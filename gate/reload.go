package gate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// fileKind names a configuration file for logs and metrics.
type fileKind string

const (
	kindACL      fileKind = "acl"
	kindHtpasswd fileKind = "htpasswd"
	kindTLS      fileKind = "tls"
	kindUpstream fileKind = "upstream_tls"
	kindReadOnly fileKind = "read_only_file"
	reloadSettle          = 100 * time.Millisecond // let writers finish a burst of events
)

func (s *Server) loadACL() error {
	if s.cfg.ACLFile == "" {
		s.acl.Store(denyAll())
		return nil
	}
	acl, err := LoadACL(s.cfg.ACLFile)
	if err != nil {
		return err
	}
	if users := s.users.Load(); users != nil {
		for _, u := range acl.Users() {
			if !users.Has(u) {
				s.log.Warn("ACL names a user missing from the htpasswd file", "user", u, "acl", acl.File(), "htpasswd", users.File())
			}
		}
	}
	s.acl.Store(acl)
	return nil
}

func (s *Server) loadHtpasswd() error {
	if s.cfg.HtpasswdFile == "" {
		return nil
	}
	users, err := LoadHtpasswd(s.cfg.HtpasswdFile)
	if err != nil {
		return err
	}
	if kinds := users.Kinds(); len(kinds) > 1 {
		s.log.Warn("htpasswd file mixes hash schemes or costs: a wrong password's timing tells users of one kind from the others; rehash them alike",
			"file", users.File(), "kinds", fmt.Sprint(kinds))
	}
	s.users.Store(users) // a new Htpasswd: the credential cache starts empty
	return nil
}

func (s *Server) loadTLS() error {
	if s.cfg.TLSCertFile == "" {
		return nil
	}
	cert, err := loadKeyPair(s.cfg.TLSCertFile, s.cfg.TLSKeyFile)
	if err != nil {
		return fmt.Errorf("tls %w", err)
	}
	if time.Now().After(cert.Leaf.NotAfter) {
		return fmt.Errorf("tls certificate %s expired on %s", s.cfg.TLSCertFile, cert.Leaf.NotAfter.Format(time.RFC3339))
	}
	s.cert.Store(cert)
	return nil
}

func (s *Server) loadUpstreamTLS() error {
	cfg, err := upstreamTLS{s.cfg.UpstreamCAFile, s.cfg.UpstreamCertFile, s.cfg.UpstreamKeyFile}.config()
	if err != nil {
		return err
	}
	s.fwd.setTLS(cfg) // requests in flight finish on their connections
	return nil
}

// checkReadOnlyFile sets read-only mode from the flag file's existence. A
// file that cannot be checked counts as present: failing closed.
func (s *Server) checkReadOnlyFile() {
	_, err := os.Stat(s.cfg.ReadOnlyFile)
	on := err == nil
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Error("cannot check read-only flag file; staying read-only", "file", s.cfg.ReadOnlyFile, "err", err)
		on = true
	}
	if s.readOnlyFile.Swap(on) != on {
		s.log.Warn("read-only flag file changed", "file", s.cfg.ReadOnlyFile, "present", on, "read_only", s.ReadOnly())
	}
}

// Reload re-reads every configuration file and the read-only flag file and
// reopens the access log file (after logrotate moved it), as SIGHUP does. A
// file that fails to load leaves its previous version in force; the errors
// are returned (and logged) together.
func (s *Server) Reload() error {
	err := s.reload(kindReadOnly, kindTLS, kindUpstream, kindHtpasswd, kindACL)
	if s.accessLog != nil {
		if rerr := s.accessLog.reopen(); rerr != nil {
			s.log.Error("reopen the access log", "err", rerr)
			err = errors.Join(err, rerr)
		}
	}
	return err
}

func (s *Server) reload(kinds ...fileKind) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	var errs []error
	for _, k := range kinds {
		var err error
		switch k {
		case kindReadOnly:
			if s.cfg.ReadOnlyFile != "" {
				s.checkReadOnlyFile()
			}
			continue
		case kindTLS:
			err = s.loadTLS()
		case kindUpstream:
			err = s.loadUpstreamTLS()
		case kindHtpasswd:
			err = s.loadHtpasswd()
		case kindACL:
			err = s.loadACL()
		}
		if err != nil {
			s.metrics.reloads.WithLabelValues(string(k), "error").Inc()
			s.log.Error("reload failed; keeping the previous configuration", "file", string(k), "err", err)
			errs = append(errs, err)
			continue
		}
		s.metrics.reloads.WithLabelValues(string(k), "ok").Inc()
		s.log.Info("reloaded", "file", string(k))
	}
	return errors.Join(errs...)
}

// watchedFiles maps each configuration file's absolute path to its kind.
func (s *Server) watchedFiles() map[string]fileKind {
	files := make(map[string]fileKind)
	add := func(name string, k fileKind) {
		if name == "" {
			return
		}
		if abs, err := filepath.Abs(name); err == nil {
			files[abs] = k
		}
	}
	add(s.cfg.ACLFile, kindACL)
	add(s.cfg.HtpasswdFile, kindHtpasswd)
	add(s.cfg.TLSCertFile, kindTLS)
	add(s.cfg.TLSKeyFile, kindTLS)
	add(s.cfg.UpstreamCAFile, kindUpstream)
	add(s.cfg.UpstreamCertFile, kindUpstream)
	add(s.cfg.UpstreamKeyFile, kindUpstream)
	add(s.cfg.ReadOnlyFile, kindReadOnly)
	return files
}

// watchFiles reloads configuration files when they change, until ctx is
// done. It watches the directories rather than the files, so files
// replaced by rename (as configuration management does) and a flag file
// that comes and goes are both seen.
func (s *Server) watchFiles(ctx context.Context) error {
	files := s.watchedFiles()
	if len(files) == 0 {
		return nil
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch configuration files: %w", err)
	}
	dirs := make(map[string]bool)
	for f := range files {
		dirs[filepath.Dir(f)] = true
	}
	for d := range dirs {
		if err := w.Add(d); err != nil {
			w.Close()
			return fmt.Errorf("watch directory %s: %w", d, err)
		}
	}
	go s.watchLoop(ctx, w, files)
	return nil
}

func (s *Server) watchLoop(ctx context.Context, w *fsnotify.Watcher, files map[string]fileKind) {
	defer w.Close()
	pending := make(map[fileKind]bool)
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			k, watched := files[filepath.Clean(ev.Name)]
			if !watched || ev.Op == fsnotify.Chmod {
				continue
			}
			pending[k] = true
			settle.Reset(reloadSettle)
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			s.log.Error("watching configuration files", "err", err)
		case <-settle.C:
			kinds := make([]fileKind, 0, len(pending))
			for _, k := range []fileKind{kindReadOnly, kindTLS, kindUpstream, kindHtpasswd, kindACL} {
				if pending[k] {
					kinds = append(kinds, k)
				}
			}
			clear(pending)
			s.reload(kinds...)
		}
	}
}
