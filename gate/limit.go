package gate

import (
	"math"
	"strconv"
	"sync"
	"time"
)

// RateLimit is the shape of a token bucket: Rate requests a second on
// average, up to Burst at once. A Rate of zero (or less) means no limit.
type RateLimit struct {
	Rate  float64
	Burst int
}

func (l RateLimit) limited() bool { return l.Rate > 0 && l.Burst > 0 }

func (l RateLimit) String() string {
	if !l.limited() {
		return "unlimited"
	}
	return strconv.FormatFloat(l.Rate, 'g', -1, 64) + "/s, burst " + strconv.Itoa(l.Burst)
}

// quickWatch is how soon a watch must be answered to count as a request.
// Watches are not charged when they open: a client holding long polls for
// hours is never refused for it. One answered within quickWatch was served
// from etcd's history, which is a read like any other (and a client
// looping over such watches must not escape its limit), so it is charged
// when it ends, after the fact.
const quickWatch = time.Second

// bucket is one token bucket. Its balance may fall below zero when a
// quick watch is charged after the fact; the client then waits off the
// debt before its next request.
type bucket struct {
	tokens   float64
	last     int64     // nanoseconds since the limiter's epoch
	limit    RateLimit // as last applied; limits change with the ACL file
	refusing bool      // refused since the last request it let through
}

// limiter keeps a token bucket per key: a client address or a user.
//
// It is a map of small structs under one mutex rather than a
// golang.org/x/time/rate.Limiter per key: the gate needs a balance that can
// go into debt, a cheap test of whether a bucket is full (then it is
// indistinguishable from no bucket and is dropped, which bounds memory),
// and limits that change with the ACL file, all of which are a few lines
// here and awkward through that package's API.
type limiter[K comparable] struct {
	epoch   time.Time
	mu      sync.Mutex
	buckets map[K]*bucket
	sweepAt int // sweep full buckets when the map reaches this size
}

const minSweep = 1024

func newLimiter[K comparable]() *limiter[K] {
	return &limiter[K]{epoch: time.Now(), buckets: make(map[K]*bucket), sweepAt: minSweep}
}

// verdict is the outcome of asking a bucket.
type verdict struct {
	ok bool
	// retry is how long until the request would be allowed, when refused.
	retry time.Duration
	// firstRefusal is set on the first refusal after a request that was let
	// through: worth a log line, where every refusal is not.
	firstRefusal bool
}

// take spends one token of key's bucket if it has one; with spend false it
// only checks that one is there (a watch opening).
func (l *limiter[K]) take(key K, limit RateLimit, now time.Time, spend bool) verdict {
	if !limit.limited() {
		return verdict{ok: true}
	}
	t := l.since(now)
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucketLocked(key, limit, t)
	b.refill(limit, t)
	if b.tokens >= 1 {
		if spend {
			b.tokens--
		}
		b.refusing = false
		return verdict{ok: true}
	}
	v := verdict{retry: time.Duration((1 - b.tokens) / limit.Rate * float64(time.Second)), firstRefusal: !b.refusing}
	b.refusing = true
	return v
}

// charge spends one token after the fact, going into debt if need be (at
// most one burst deep).
func (l *limiter[K]) charge(key K, limit RateLimit, now time.Time) {
	if !limit.limited() {
		return
	}
	t := l.since(now)
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucketLocked(key, limit, t)
	b.refill(limit, t)
	b.tokens = max(b.tokens-1, -float64(limit.Burst))
}

func (l *limiter[K]) since(now time.Time) int64 { return int64(now.Sub(l.epoch)) }

func (l *limiter[K]) bucketLocked(key K, limit RateLimit, t int64) *bucket {
	if b := l.buckets[key]; b != nil {
		return b
	}
	if len(l.buckets) >= l.sweepAt {
		l.sweepLocked(t)
	}
	b := &bucket{tokens: float64(limit.Burst), last: t, limit: limit}
	l.buckets[key] = b
	return b
}

// sweepLocked drops the buckets that have filled up again: a new bucket
// would behave the same. The next sweep waits until the map has doubled,
// so the cost per request stays constant.
func (l *limiter[K]) sweepLocked(t int64) {
	for k, b := range l.buckets {
		b.refill(b.limit, t)
		if b.tokens >= float64(b.limit.Burst) {
			delete(l.buckets, k)
		}
	}
	l.sweepAt = max(2*len(l.buckets), minSweep)
}

// size is the number of buckets held.
func (l *limiter[K]) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

func (b *bucket) refill(limit RateLimit, t int64) {
	b.limit = limit
	if t > b.last {
		b.tokens = math.Min(float64(limit.Burst), b.tokens+float64(t-b.last)/float64(time.Second)*limit.Rate)
		b.last = t
	}
	if b.tokens > float64(limit.Burst) { // the limit shrank
		b.tokens = float64(limit.Burst)
	}
}

// retryAfter renders a wait as whole seconds for Retry-After, at least 1.
func retryAfter(d time.Duration) string {
	return strconv.FormatInt(max(1, int64(math.Ceil(d.Seconds()))), 10)
}
