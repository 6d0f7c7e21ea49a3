package mirror

import (
	"context"
	"errors"
	"fmt"

	client "go.etcd.io/etcd/client/v2"
)

// DivergenceError says that the destination does not hold what the source's
// event says the key held before the change (its prevNode): something other
// than this mirror changed the replica, or it was never a copy of this
// source. Replication stops rather than overwrite it.
type DivergenceError struct {
	Index     uint64 // the source event's own index
	Action    string // the source event's action
	SourceKey string
	DestKey   string
	Expected  string // what the event says the key held
	Found     string // what the destination holds
}

func (e *DivergenceError) Error() string {
	return fmt.Sprintf("destination diverged from the source at index %d: %s of %s (destination key %s) expects the destination to hold %s, but it holds %s; "+
		"remedy: find out what wrote to the replica, then run `confsync mirror verify` to list every difference and restart with --reload, "+
		"which rewrites only the keys that differ and never empties the destination",
		e.Index, e.Action, e.SourceKey, e.DestKey, e.Expected, e.Found)
}

// RefusalError says that the mirror will not start or go on because doing
// so could replicate the wrong data or overwrite another writer's.
type RefusalError struct {
	Reason string
	Remedy string
}

func (e *RefusalError) Error() string {
	if e.Remedy == "" {
		return "refusing to replicate: " + e.Reason
	}
	return "refusing to replicate: " + e.Reason + "; remedy: " + e.Remedy
}

// ConfigError is a bad flag or setting; Main exits 2 on it.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

func configErrorf(format string, args ...any) error {
	return &ConfigError{Err: fmt.Errorf(format, args...)}
}

// errHistoryCleared ends a stream whose next index has left the source's
// 1000-event history; the mirror then resyncs.
var errHistoryCleared = errors.New("source history cleared (etcd error 401)")

// transient reports whether an error is worth retrying: a connection that
// failed, a timeout, a 5xx, a leader election. etcd's answers about keys
// (not found, compare failed, ...) and the mirror's own verdicts are not.
func transient(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	var div *DivergenceError
	var ref *RefusalError
	var cfg *ConfigError
	var lost *LockLostError
	var locked *LockedError
	if errors.As(err, &div) || errors.As(err, &ref) || errors.As(err, &cfg) || errors.Is(err, errHistoryCleared) ||
		errors.As(err, &lost) || errors.As(err, &locked) {
		return false
	}
	var e client.Error
	if errors.As(err, &e) {
		switch e.Code {
		case client.ErrorCodeRaftInternal:
			return !storeRefusal(err)
		case client.ErrorCodeLeaderElect, client.ErrorCodeWatcherCleared:
			return true
		}
		return false
	}
	return true
}
