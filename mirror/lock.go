package mirror

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// The destination lock makes two mirrors on one destination impossible.
//
// It is a key beside the index key (<index key>.lock) that a mirror creates
// only if it does not exist (v2: prevExist=false with a TTL; v3: a txn on
// create revision 0, the key bound to a lease), holding the owner's host,
// pid, start time and version. The holder renews it every third of its TTL
// and stops writing as soon as it cannot be sure it still holds it: every
// destination write first checks that the last successful renewal was sent
// less than TTL minus a second ago. etcd starts the TTL when it applies the
// renewal, after the holder sent it, so the holder's deadline always falls
// before the lock can expire and anyone else can take it. A v3 destination
// also fences every write: the txn compares the lock's create revision, so
// a paused holder's late write fails in etcd itself. v2 cannot make one
// key's write depend on another's; there the deadline check is the fence.

// lockMargin is how long before the TTL runs out the holder stops writing.
const lockMargin = time.Second

// lockOwner is the lock key's value.
type lockOwner struct {
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
	Version string    `json:"version"`
	// ID tells two processes apart even on one host with a recycled pid.
	ID string `json:"id"`
}

func newLockOwner(version string) lockOwner {
	host, _ := os.Hostname()
	b := make([]byte, 8)
	crand.Read(b)
	if version == "" {
		version = "dev"
	}
	return lockOwner{Host: host, PID: os.Getpid(), Started: time.Now().UTC().Truncate(time.Second),
		Version: version, ID: hex.EncodeToString(b)}
}

func (o lockOwner) encode() string {
	b, _ := json.Marshal(o)
	return string(b)
}

func (o lockOwner) String() string {
	return fmt.Sprintf("confsync mirror %s on %s, pid %d, started %s",
		quoteShort(o.Version, 40), quoteShort(o.Host, 100), o.PID, o.Started.Format(time.RFC3339))
}

// parseLockOwner reads a lock value. A value that is not a confsync lock
// (hand-written, or another tool's) is still a lock: it is described as it
// is, truncated, rather than refused.
func parseLockOwner(value string) (lockOwner, error) {
	var o lockOwner
	dec := json.NewDecoder(strings.NewReader(value))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&o); err != nil {
		return lockOwner{}, fmt.Errorf("lock value %s is not a confsync mirror lock: %v", quoteShort(value, 120), err)
	}
	if dec.More() {
		return lockOwner{}, fmt.Errorf("lock value %s has data after the JSON document", quoteShort(value, 120))
	}
	if o.ID == "" {
		return lockOwner{}, fmt.Errorf("lock value %s names no owner id", quoteShort(value, 120))
	}
	return o, nil
}

func describeHolder(value string) string {
	if o, err := parseLockOwner(value); err == nil {
		return o.String()
	}
	return fmt.Sprintf("an unknown holder (lock value %s)", quoteShort(value, 120))
}

// quoteShort quotes s as %q would and keeps the result within about max
// bytes: a value read from etcd can be anything, and each unprintable byte
// quotes to four, so bounding s before quoting does not bound the message.
func quoteShort(s string, max int) string {
	b := []byte{'"'}
	for i := 0; i < len(s); {
		_, size := utf8.DecodeRuneInString(s[i:])
		q := strconv.Quote(s[i : i+size])
		piece := q[1 : len(q)-1]
		if len(b)+len(piece) > max {
			b = append(b, "..."...)
			break
		}
		b = append(b, piece...)
		i += size
	}
	return string(append(b, '"'))
}

// LockedError says that another mirror holds the destination, alive: it
// renewed its lock while this one watched.
type LockedError struct {
	Key    string // the lock key
	Holder string // who holds it, as its value describes it
}

func (e *LockedError) Error() string {
	return fmt.Sprintf("refusing to replicate: another mirror writes this destination: %s holds %s and keeps renewing it; "+
		"remedy: stop that mirror first, or run this one with --standby to take over when it stops", e.Holder, e.Key)
}

// LockLostError says that the mirror could not renew its lock in time and
// stopped writing; Run then tries to take the lock again.
type LockLostError struct {
	Key    string
	Reason string
}

func (e *LockLostError) Error() string {
	return fmt.Sprintf("lost the destination lock %s (%s); writes stopped", e.Key, e.Reason)
}

// lockBackend is the destination's side of the lock, for one API.
type lockBackend interface {
	// tryAcquire creates the lock when it does not exist. When it exists,
	// it returns ok false with the holder's value and a version that
	// changes whenever the holder renews it.
	tryAcquire(ctx context.Context, value string, ttl time.Duration) (ok bool, holder string, version uint64, err error)
	// renew extends our lock; it returns a *LockLostError when the lock is
	// no longer ours.
	renew(ctx context.Context, value string, ttl time.Duration) error
	// release removes our lock, if it is still ours.
	release(ctx context.Context, value string) error
}

// destLock is one mirror's hold on the destination.
type destLock struct {
	key     string
	ttl     time.Duration
	owner   lockOwner
	backend lockBackend
	now     func() time.Time

	mu         sync.Mutex
	held       bool
	validUntil time.Time // no destination write after this
	lostReason string
}

func newDestLock(key string, ttl time.Duration, owner lockOwner, backend lockBackend) *destLock {
	return &destLock{key: key, ttl: ttl, owner: owner, backend: backend, now: time.Now}
}

// check returns nil while the lock is surely ours, a *LockLostError once it
// may not be. Every destination write calls it first.
func (l *destLock) check() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case !l.held && l.lostReason != "":
		return &LockLostError{Key: l.key, Reason: l.lostReason}
	case !l.held:
		return &LockLostError{Key: l.key, Reason: "not acquired"}
	case !l.now().Before(l.validUntil):
		l.held = false
		l.lostReason = fmt.Sprintf("no renewal succeeded within %s", l.ttl-lockMargin)
		return &LockLostError{Key: l.key, Reason: l.lostReason}
	}
	return nil
}

// granted records a successful acquisition or renewal sent at sent.
func (l *destLock) granted(sent time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.held, l.lostReason = true, ""
	l.validUntil = sent.Add(l.ttl - lockMargin)
}

func (l *destLock) lose(reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.held, l.lostReason = false, reason
}

// acquireLock takes the lock. When another mirror holds it: with standby,
// wait until it expires and take it; without, wait until the holder is
// seen renewing it twice (then fail with *LockedError) or it expires (then
// take it: its holder died, as after a crash and a restart by systemd).
func (m *Mirror) acquireLock(ctx context.Context, standby bool) error {
	l := m.lock
	value := l.owner.encode()
	poll := min(l.ttl/4, time.Second)
	var lastHolder string
	var lastVersion uint64
	var seenAt time.Time
	renewals := 0
	for {
		var ok bool
		var holder string
		var version uint64
		sent := l.now()
		err := m.retry(ctx, sideDestination, "take the destination lock", func(ctx context.Context) error {
			var err error
			sent = l.now()
			ok, holder, version, err = l.backend.tryAcquire(ctx, value, l.ttl)
			return err
		})
		if err != nil {
			return err
		}
		if ok {
			l.granted(sent)
			m.log.Info("holding the destination lock", "key", l.key, "ttl", l.ttl, "owner", l.owner.String())
			return nil
		}
		if holder == "" {
			continue // it expired between our attempt and our read
		}
		switch {
		case lastHolder == "":
			lastHolder, lastVersion, seenAt = holder, version, l.now()
			if standby {
				m.setPhase(phaseStandby)
				m.log.Info("another mirror holds the destination; standing by until its lock expires",
					"key", l.key, "holder", describeHolder(holder))
			} else {
				m.log.Info("another mirror holds the destination lock; checking whether it is alive",
					"key", l.key, "holder", describeHolder(holder), "wait_at_most", l.ttl)
			}
		case holder != lastHolder || version != lastVersion:
			// Two renewals prove the holder alive: a holder killed with a
			// renewal on the wire can still move the version once.
			renewals++
			if !standby && (renewals >= 2 || holder != lastHolder) {
				return &LockedError{Key: l.key, Holder: describeHolder(holder)}
			}
			if holder != lastHolder {
				m.log.Info("the destination lock changed hands; still standing by", "key", l.key, "holder", describeHolder(holder))
			}
			lastHolder, lastVersion, seenAt = holder, version, l.now()
		case !standby && l.now().Sub(seenAt) > 2*l.ttl:
			// Neither renewed nor expired: the holder's TTL is longer than ours.
			return &LockedError{Key: l.key, Holder: describeHolder(holder)}
		}
		m.noteAlive()
		t := time.NewTimer(poll)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// keepLock renews the lock every third of its TTL until ctx ends. When the
// lock is lost, or cannot be renewed before the writing deadline, it calls
// lost with a *LockLostError; by then check already fails, so no write
// leaves after the deadline.
func (m *Mirror) keepLock(ctx context.Context, lost func(error)) {
	l := m.lock
	value := l.owner.encode()
	every := l.ttl / 3
	next := every
	for {
		t := time.NewTimer(next)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
		if err := l.check(); err != nil {
			lost(err)
			return
		}
		sent := l.now()
		l.mu.Lock()
		deadline := l.validUntil
		l.mu.Unlock()
		rctx, cancel := context.WithDeadline(ctx, deadline)
		err := l.backend.renew(rctx, value, l.ttl)
		cancel()
		var ll *LockLostError
		switch {
		case err == nil:
			l.granted(sent)
			next = every
		case errors.As(err, &ll):
			l.lose(ll.Reason)
			lost(err)
			return
		case ctx.Err() != nil:
			return
		default:
			m.noteError(sideDestination, "renew the destination lock", err)
			m.log.Warn("could not renew the destination lock; retrying", "key", l.key, "err", err, "writes_stop_at", deadline)
			next = min(every, 500*time.Millisecond)
		}
	}
}

// releaseLock gives the lock up, so that a standby takes over at once.
func (m *Mirror) releaseLock(ctx context.Context) {
	l := m.lock
	if l.check() != nil {
		return
	}
	l.lose("released")
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := l.backend.release(ctx, l.owner.encode()); err != nil {
		m.log.Warn("could not release the destination lock; it expires by itself", "key", l.key, "ttl", l.ttl, "err", err)
		return
	}
	m.log.Info("released the destination lock", "key", l.key)
}
