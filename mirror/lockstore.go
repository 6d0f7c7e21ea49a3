package mirror

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	client "go.etcd.io/etcd/client/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// v2Lock is the lock on a v2 destination: a key with a TTL, created with
// prevExist=false and renewed with a compare-and-swap on its own value.
type v2Lock struct {
	keys client.KeysAPI // unfenced: the lock is what fences the others
	key  string
}

func (b v2Lock) tryAcquire(ctx context.Context, value string, ttl time.Duration) (bool, string, uint64, error) {
	_, err := b.keys.Set(ctx, b.key, value, &client.SetOptions{PrevExist: client.PrevNoExist, TTL: ttl})
	if err == nil {
		return true, "", 0, nil
	}
	if !isCode(err, client.ErrorCodeNodeExist) {
		return false, "", 0, fmt.Errorf("create lock %s: %w", b.key, err)
	}
	resp, err := b.keys.Get(ctx, b.key, &client.GetOptions{Quorum: true})
	switch {
	case etcd.IsKeyNotFound(err):
		return false, "", 0, nil // expired in between: try again
	case err != nil:
		return false, "", 0, fmt.Errorf("read lock %s: %w", b.key, err)
	case resp.Node.Value == value:
		// Ours: an earlier attempt landed without its answer, or we lost
		// track of it. Renew it, so that its TTL runs from now.
		if err := b.renew(ctx, value, ttl); err != nil {
			if errors.As(err, new(*LockLostError)) {
				return false, "", 0, nil
			}
			return false, "", 0, err
		}
		return true, "", 0, nil
	}
	return false, resp.Node.Value, resp.Node.ModifiedIndex, nil
}

func (b v2Lock) renew(ctx context.Context, value string, ttl time.Duration) error {
	_, err := b.keys.Set(ctx, b.key, value, &client.SetOptions{PrevValue: value, TTL: ttl})
	switch {
	case err == nil:
		return nil
	case isCode(err, client.ErrorCodeTestFailed):
		return &LockLostError{Key: b.key, Reason: "another mirror holds it now"}
	case etcd.IsKeyNotFound(err):
		return &LockLostError{Key: b.key, Reason: "it expired"}
	}
	return fmt.Errorf("renew lock %s: %w", b.key, err)
}

func (b v2Lock) release(ctx context.Context, value string) error {
	_, err := b.keys.Delete(ctx, b.key, &client.DeleteOptions{PrevValue: value})
	if err != nil && !etcd.IsKeyNotFound(err) && !isCode(err, client.ErrorCodeTestFailed) {
		return fmt.Errorf("delete lock %s: %w", b.key, err)
	}
	return nil
}

// fencedKeys refuses every write once the lock may have been lost, so that
// a mirror that could not renew its lock never writes the destination
// again; reads pass.
type fencedKeys struct {
	client.KeysAPI
	lock *destLock
}

func (f fencedKeys) Set(ctx context.Context, key, value string, opts *client.SetOptions) (*client.Response, error) {
	if err := f.lock.check(); err != nil {
		return nil, err
	}
	return f.KeysAPI.Set(ctx, key, value, opts)
}

func (f fencedKeys) Delete(ctx context.Context, key string, opts *client.DeleteOptions) (*client.Response, error) {
	if err := f.lock.check(); err != nil {
		return nil, err
	}
	return f.KeysAPI.Delete(ctx, key, opts)
}

func (f fencedKeys) Create(ctx context.Context, key, value string) (*client.Response, error) {
	if err := f.lock.check(); err != nil {
		return nil, err
	}
	return f.KeysAPI.Create(ctx, key, value)
}

func (f fencedKeys) CreateInOrder(ctx context.Context, dir, value string, opts *client.CreateInOrderOptions) (*client.Response, error) {
	if err := f.lock.check(); err != nil {
		return nil, err
	}
	return f.KeysAPI.CreateInOrder(ctx, dir, value, opts)
}

func (f fencedKeys) Update(ctx context.Context, key, value string) (*client.Response, error) {
	if err := f.lock.check(); err != nil {
		return nil, err
	}
	return f.KeysAPI.Update(ctx, key, value)
}

// v3Lock is the lock on a v3 destination: a key bound to a lease, created
// in a txn on create revision 0. Its create revision identifies this
// holding; every write of the mirror compares it (fence).
type v3Lock struct {
	side *v3Side
	key  string
	// timeout bounds each request, well below the TTL, so that a hung
	// member costs one attempt, not the lock.
	timeout time.Duration

	mu        sync.Mutex
	lease     clientv3.LeaseID
	createRev int64
}

func (b *v3Lock) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, b.timeout)
}

func (b *v3Lock) tryAcquire(ctx context.Context, value string, ttl time.Duration) (bool, string, uint64, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	g, err := b.side.cli.Grant(cctx, int64(ttl/time.Second))
	if err != nil {
		return false, "", 0, fmt.Errorf("grant a lease for lock %s: %w", b.key, err)
	}
	resp, err := b.side.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(b.key), "=", 0)).
		Then(clientv3.OpPut(b.key, value, clientv3.WithLease(g.ID))).
		Else(clientv3.OpGet(b.key)).Commit()
	if err != nil {
		b.revoke(ctx, g.ID)
		return false, "", 0, fmt.Errorf("create lock %s: %w", b.key, err)
	}
	b.side.saw(resp.Header)
	if resp.Succeeded {
		b.set(g.ID, resp.Header.Revision)
		return true, "", 0, nil
	}
	b.revoke(ctx, g.ID)
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return false, "", 0, nil
	}
	if string(kvs[0].Value) == value {
		// Ours, from before we lost track of it: take its lease back and
		// renew it, so that its TTL runs from now.
		b.set(clientv3.LeaseID(kvs[0].Lease), kvs[0].CreateRevision)
		if err := b.renew(ctx, value, ttl); err != nil {
			if errors.As(err, new(*LockLostError)) {
				return false, "", 0, nil
			}
			return false, "", 0, err
		}
		return true, "", 0, nil
	}
	return false, string(kvs[0].Value), uint64(kvs[0].ModRevision), nil
}

func (b *v3Lock) set(lease clientv3.LeaseID, rev int64) {
	b.mu.Lock()
	b.lease, b.createRev = lease, rev
	b.mu.Unlock()
}

func (b *v3Lock) holding() (clientv3.LeaseID, int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lease, b.createRev
}

func (b *v3Lock) revoke(ctx context.Context, id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	b.side.cli.Revoke(ctx, id)
}

// fence is the comparison every write of this holder carries.
func (b *v3Lock) fence() clientv3.Cmp {
	_, rev := b.holding()
	return clientv3.Compare(clientv3.CreateRevision(b.key), "=", rev)
}

func (b *v3Lock) renew(ctx context.Context, value string, ttl time.Duration) error {
	lease, rev := b.holding()
	cctx, cancel := b.call(ctx)
	defer cancel()
	if _, err := b.side.cli.KeepAliveOnce(cctx, lease); err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return &LockLostError{Key: b.key, Reason: "its lease expired"}
		}
		return fmt.Errorf("renew the lease of lock %s: %w", b.key, err)
	}
	// Rewrite the value so that its mod revision moves: that is how a
	// mirror starting without --standby sees this one is alive.
	resp, err := b.side.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(b.key), "=", rev)).
		Then(clientv3.OpPut(b.key, value, clientv3.WithLease(lease))).Commit()
	if err != nil {
		return fmt.Errorf("renew lock %s: %w", b.key, err)
	}
	if !resp.Succeeded {
		return &LockLostError{Key: b.key, Reason: "another mirror holds it now"}
	}
	return nil
}

func (b *v3Lock) release(ctx context.Context, value string) error {
	lease, rev := b.holding()
	if _, err := b.side.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(b.key), "=", rev)).
		Then(clientv3.OpDelete(b.key)).Commit(); err != nil {
		return fmt.Errorf("delete lock %s: %w", b.key, err)
	}
	_, err := b.side.cli.Revoke(ctx, lease)
	if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("revoke the lease of lock %s: %w", b.key, err)
	}
	return nil
}
