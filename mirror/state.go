package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	client "go.etcd.io/etcd/client/v2"
)

// replicationState is the JSON document kept beside etcdmirror's index key,
// at <index key>.source (/__replication/conftool.source,
// /__replication/__ROOT__.source). etcdmirror ignores it, so a site can still
// switch back by changing the binary.
type replicationState struct {
	// SourceClusterID, SourcePrefix and Strip identify what the destination
	// mirrors. A mirror started against another cluster or with another
	// mapping refuses to resume.
	SourceClusterID   string `json:"source_cluster_id"`
	SourcePrefix      string `json:"source_prefix"`
	DestinationPrefix string `json:"destination_prefix"`
	Strip             bool   `json:"strip"`
	// SourceAPI is the API the index was read through: a v2 index and a v3
	// revision are different counters. Absent means v2 (etcdmirror, and
	// confsync before v3).
	SourceAPI string `json:"source_api,omitempty"`
	// MayHaveAppliedThrough is written before the mirror applies events
	// above the index key whose keys overlap (two events on one key, or on
	// a directory and something inside it). After a crash, events up to
	// this index may already be on the destination even though the index
	// key is lower; replaying them tolerates a destination that is already
	// past them. Beyond it, every event is checked strictly.
	MayHaveAppliedThrough uint64 `json:"may_have_applied_through"`
	// Resyncing is true while a resync rewrites the destination; a mirror
	// that finds it set after a crash resyncs again rather than replaying.
	Resyncing bool `json:"resyncing,omitempty"`
	// Writer names the process that wrote this document. A mirror that
	// finds another writer's document where its own should be stops: two
	// mirrors must never write one destination.
	Writer    string    `json:"writer"`
	UpdatedAt time.Time `json:"updated_at"`
}

// stateStore reads and writes the index key and the state key on the
// destination. Writes are fenced: each one names the modifiedIndex this
// process last saw (prevIndex), so a second mirror on the same destination
// is noticed at its first write instead of interleaving with this one.
type stateStore struct {
	keys     client.KeysAPI
	indexKey string
	stateKey string
	writer   string

	mu       sync.Mutex
	indexRev uint64 // modifiedIndex of the index key as last seen, 0 if unknown
	stateRev uint64 // same for the state key; 0 with absent means create
	absent   bool   // the state key did not exist when last read
	current  replicationState
}

// loaded is what the destination held when the mirror started.
type loaded struct {
	index    uint64
	hasIndex bool
	state    *replicationState
}

func (s *stateStore) load(ctx context.Context) (loaded, error) {
	var l loaded
	resp, err := s.keys.Get(ctx, s.indexKey, &client.GetOptions{Quorum: true})
	switch {
	case etcd.IsKeyNotFound(err):
	case err != nil:
		return l, fmt.Errorf("read replication index %s: %w", s.indexKey, err)
	case resp.Node.Dir:
		return l, &RefusalError{
			Reason: fmt.Sprintf("replication index %s on the destination is a directory", s.indexKey),
			Remedy: "another mirror uses a destination prefix below this one; pick a distinct --dst-prefix",
		}
	default:
		if l.index, err = parseIndex(s.indexKey, resp.Node.Value); err != nil {
			return l, err
		}
		l.hasIndex = true
		s.mu.Lock()
		s.indexRev = resp.Node.ModifiedIndex
		s.mu.Unlock()
	}

	resp, err = s.keys.Get(ctx, s.stateKey, &client.GetOptions{Quorum: true})
	switch {
	case etcd.IsKeyNotFound(err):
		s.mu.Lock()
		s.stateRev, s.absent = 0, true
		s.mu.Unlock()
	case err != nil:
		return l, fmt.Errorf("read replication state %s: %w", s.stateKey, err)
	default:
		st, err := parseState(s.stateKey, resp.Node.Value)
		if err != nil {
			return l, err
		}
		l.state = &st
		s.mu.Lock()
		s.stateRev, s.absent, s.current = resp.Node.ModifiedIndex, false, st
		s.mu.Unlock()
	}
	return l, nil
}

// writeIndex records that every source event up to idx is on the
// destination. The write is fenced on the index key's last known version;
// when that fails, the state key says whose it is: another writer's means
// this mirror was replaced and must stop, ours means one of our own writes
// landed without its answer (a cancelled or timed-out request), and the
// write is simply repeated on the current version.
func (s *stateStore) writeIndex(ctx context.Context, idx uint64) error {
	value := strconv.FormatUint(idx, 10)
	for range 3 {
		s.mu.Lock()
		rev := s.indexRev
		s.mu.Unlock()
		opts := &client.SetOptions{PrevIndex: rev}
		if rev == 0 {
			opts = nil
		}
		resp, err := s.keys.Set(ctx, s.indexKey, value, opts)
		if err == nil {
			s.mu.Lock()
			s.indexRev = resp.Node.ModifiedIndex
			s.mu.Unlock()
			return nil
		}
		if !isCode(err, client.ErrorCodeTestFailed) && !etcd.IsKeyNotFound(err) {
			return fmt.Errorf("write replication index %s: %w", s.indexKey, err)
		}
		if err := s.checkWriter(ctx); err != nil {
			return err
		}
		cur, gerr := s.keys.Get(ctx, s.indexKey, &client.GetOptions{Quorum: true})
		switch {
		case etcd.IsKeyNotFound(gerr):
			// Deleted behind our back: put it back rather than lose progress.
			s.mu.Lock()
			s.indexRev = 0
			s.mu.Unlock()
		case gerr != nil:
			return fmt.Errorf("read replication index %s: %w", s.indexKey, gerr)
		default:
			s.mu.Lock()
			s.indexRev = cur.Node.ModifiedIndex
			s.mu.Unlock()
		}
	}
	return &RefusalError{
		Reason: fmt.Sprintf("replication index %s keeps changing while this mirror writes it", s.indexKey),
		Remedy: "something else writes the index (another mirror, or a manual edit); stop it, then restart this mirror",
	}
}

// bumpIndex rewrites the index key with the value it holds, so that its
// modifiedIndex changes: a mirror still writing this destination then
// fails its next fenced write of the index and stops. It returns the index.
func (s *stateStore) bumpIndex(ctx context.Context) (uint64, error) {
	for range 5 {
		resp, err := s.keys.Get(ctx, s.indexKey, &client.GetOptions{Quorum: true})
		if err != nil {
			return 0, fmt.Errorf("read replication index %s: %w", s.indexKey, err)
		}
		idx, err := parseIndex(s.indexKey, resp.Node.Value)
		if err != nil {
			return 0, err
		}
		set, err := s.keys.Set(ctx, s.indexKey, resp.Node.Value, &client.SetOptions{PrevIndex: resp.Node.ModifiedIndex})
		if isCode(err, client.ErrorCodeTestFailed) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("write replication index %s: %w", s.indexKey, err)
		}
		s.mu.Lock()
		s.indexRev = set.Node.ModifiedIndex
		s.mu.Unlock()
		return idx, nil
	}
	return 0, &RefusalError{
		Reason: fmt.Sprintf("replication index %s keeps changing while this mirror starts", s.indexKey),
		Remedy: "another mirror writes this destination; stop it first",
	}
}

// writeState replaces the state document, fenced on the last version seen.
func (s *stateStore) writeState(ctx context.Context, update func(*replicationState)) error {
	s.mu.Lock()
	next := s.current
	rev, absent := s.stateRev, s.absent
	s.mu.Unlock()
	update(&next)
	next.Writer = s.writer
	next.UpdatedAt = time.Now().UTC().Truncate(time.Second)
	body, err := json.Marshal(next)
	if err != nil {
		return err
	}
	opts := &client.SetOptions{PrevIndex: rev}
	if absent {
		opts = &client.SetOptions{PrevExist: client.PrevNoExist}
	}
	resp, err := s.keys.Set(ctx, s.stateKey, string(body), opts)
	if err == nil {
		s.mu.Lock()
		s.stateRev, s.absent, s.current = resp.Node.ModifiedIndex, false, next
		s.mu.Unlock()
		return nil
	}
	if !isCode(err, client.ErrorCodeTestFailed) && !isCode(err, client.ErrorCodeNodeExist) && !etcd.IsKeyNotFound(err) {
		return fmt.Errorf("write replication state %s: %w", s.stateKey, err)
	}
	cur, gerr := s.keys.Get(ctx, s.stateKey, &client.GetOptions{Quorum: true})
	if etcd.IsKeyNotFound(gerr) {
		s.mu.Lock()
		s.stateRev, s.absent = 0, true
		s.mu.Unlock()
		return s.writeState(ctx, update)
	}
	if gerr != nil {
		return fmt.Errorf("read replication state %s: %w", s.stateKey, gerr)
	}
	var found replicationState
	if json.Unmarshal([]byte(cur.Node.Value), &found) != nil || found.Writer != s.writer {
		return s.takenOver(found.Writer)
	}
	// Our own earlier write landed unseen; adopt it and write again.
	s.mu.Lock()
	s.stateRev, s.absent, s.current = cur.Node.ModifiedIndex, false, found
	s.mu.Unlock()
	return s.writeState(ctx, update)
}

// checkWriter fails when another process owns the state key.
func (s *stateStore) checkWriter(ctx context.Context) error {
	cur, err := s.keys.Get(ctx, s.stateKey, &client.GetOptions{Quorum: true})
	if etcd.IsKeyNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read replication state %s: %w", s.stateKey, err)
	}
	var found replicationState
	if json.Unmarshal([]byte(cur.Node.Value), &found) != nil || found.Writer != s.writer {
		return s.takenOver(found.Writer)
	}
	return nil
}

func (s *stateStore) takenOver(other string) error {
	if other == "" {
		other = "an unknown writer"
	}
	return &RefusalError{
		Reason: fmt.Sprintf("replication state %s is now written by %s, not by this mirror (%s)", s.stateKey, other, s.writer),
		Remedy: "two mirrors must not write one destination prefix: stop one of them (this one has stopped)",
	}
}

// snapshot returns the state document as last written or read.
func (s *stateStore) snapshot() replicationState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// parseIndex reads the index key's value: a decimal source index (or v3
// revision), as etcdmirror writes it; surrounding white space is allowed.
func parseIndex(key, value string) (uint64, error) {
	v := strings.TrimSpace(value)
	idx, err := strconv.ParseUint(v, 10, 64)
	if err != nil || (len(v) > 1 && v[0] == '0') {
		return 0, &RefusalError{
			Reason: fmt.Sprintf("replication index %s on the destination holds %s, not a decimal etcd index", key, quoteShort(value, 80)),
			Remedy: "set it to the last source index known to be replicated, or run once with --reload",
		}
	}
	return idx, nil
}

// parseState reads the .source document. Unknown fields are accepted, so
// that an older mirror can resume after a newer one.
func parseState(key, value string) (replicationState, error) {
	var st replicationState
	if err := json.Unmarshal([]byte(value), &st); err != nil {
		return replicationState{}, &RefusalError{
			Reason: fmt.Sprintf("replication state %s on the destination is not valid JSON: %v", key, err),
			Remedy: "delete that key (the mirror then resumes from the index key alone) or run with --reload",
		}
	}
	switch st.SourceAPI {
	case "", apiV2, apiV3:
	default:
		return replicationState{}, &RefusalError{
			Reason: fmt.Sprintf("replication state %s on the destination names source API %s, neither v2 nor v3", key, quoteShort(st.SourceAPI, 40)),
			Remedy: "delete that key or run with --reload",
		}
	}
	return st, nil
}

// sourceAPI is the API the recorded index counts in.
func (s replicationState) sourceAPI() string {
	if s.SourceAPI == "" {
		return apiV2
	}
	return s.SourceAPI
}

func isCode(err error, code int) bool {
	var e client.Error
	return errors.As(err, &e) && e.Code == code
}
