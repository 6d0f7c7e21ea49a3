// Package retry holds the delays every loop that talks to etcd shares: a
// capped exponential backoff with jitter, so that a fleet of clients does not
// retry in lockstep after an outage, and plain jitter for periodic work.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is a capped exponential delay with jitter. The zero value is not
// usable; set Min and Max.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Reset starts the delays over after a success.
func (b *Backoff) Reset() { b.cur = 0 }

// Next returns the next delay: Min, then doubling up to Max, each drawn
// between half and all of the nominal value.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.Min
	} else if b.cur *= 2; b.cur > b.Max {
		b.cur = b.Max
	}
	return b.cur/2 + time.Duration(rand.Int64N(int64(b.cur/2)+1))
}

// Wait sleeps for the next delay; false means ctx ended first.
func (b *Backoff) Wait(ctx context.Context) bool {
	return Sleep(ctx, b.Next())
}

// Sleep waits d or until ctx ends; false means ctx ended first.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Jitter returns d plus up to frac*d, at random.
func Jitter(d time.Duration, frac float64) time.Duration {
	return d + time.Duration(rand.Float64()*frac*float64(d))
}
