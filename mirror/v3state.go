package mirror

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// progressStore keeps the replication index and the .source document on
// the destination, for either API.
type progressStore interface {
	load(ctx context.Context) (loaded, error)
	writeIndex(ctx context.Context, idx uint64) error
	writeState(ctx context.Context, update func(*replicationState)) error
	snapshot() replicationState
}

// v3StateStore keeps them on a v3 destination. Every write is a txn fenced
// on the lock; a batch of events writes the index key in the same txn as
// the events, so the index can never lag behind what was applied.
type v3StateStore struct {
	side     *v3Side
	lock     *destLock
	fence    func() clientv3.Cmp
	indexKey string
	stateKey string
	writer   string

	mu      sync.Mutex
	current replicationState
}

func (s *v3StateStore) load(ctx context.Context) (loaded, error) {
	var l loaded
	cctx, cancel := s.side.call(ctx)
	defer cancel()
	resp, err := s.side.cli.Txn(cctx).Then(clientv3.OpGet(s.indexKey), clientv3.OpGet(s.stateKey)).Commit()
	if err != nil {
		return l, fmt.Errorf("read replication index %s and state %s: %w", s.indexKey, s.stateKey, err)
	}
	s.side.saw(resp.Header)
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		if l.index, err = parseIndex(s.indexKey, string(kvs[0].Value)); err != nil {
			return l, err
		}
		l.hasIndex = true
	}
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		st, err := parseState(s.stateKey, string(kvs[0].Value))
		if err != nil {
			return l, err
		}
		l.state = &st
		s.mu.Lock()
		s.current = st
		s.mu.Unlock()
	}
	return l, nil
}

// commit runs ops in a txn fenced on the lock, and reports the lock lost
// when the fence fails.
func (s *v3StateStore) commit(ctx context.Context, what string, ops ...clientv3.Op) error {
	if err := s.lock.check(); err != nil {
		return err
	}
	cctx, cancel := s.side.call(ctx)
	defer cancel()
	resp, err := s.side.cli.Txn(cctx).If(s.fence()).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if !resp.Succeeded {
		s.lock.lose("another mirror holds it now")
		return s.lock.check()
	}
	return nil
}

func (s *v3StateStore) writeIndex(ctx context.Context, idx uint64) error {
	return s.commit(ctx, "write replication index "+s.indexKey, clientv3.OpPut(s.indexKey, strconv.FormatUint(idx, 10)))
}

func (s *v3StateStore) writeState(ctx context.Context, update func(*replicationState)) error {
	s.mu.Lock()
	next := s.current
	s.mu.Unlock()
	update(&next)
	next.Writer = s.writer
	next.UpdatedAt = time.Now().UTC().Truncate(time.Second)
	body, err := json.Marshal(next)
	if err != nil {
		return err
	}
	if err := s.commit(ctx, "write replication state "+s.stateKey, clientv3.OpPut(s.stateKey, string(body))); err != nil {
		return err
	}
	s.mu.Lock()
	s.current = next
	s.mu.Unlock()
	return nil
}

func (s *v3StateStore) snapshot() replicationState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}
