package gate

import (
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestTokenBucket drives a limiter with explicit times: a burst, then the
// rate; a charge after the fact puts the bucket in debt; full buckets are
// dropped so that memory follows the active clients only.
func TestTokenBucket(t *testing.T) {
	l := newLimiter[string]()
	at := func(d time.Duration) time.Time { return l.epoch.Add(d) }
	limit := RateLimit{Rate: 2, Burst: 3}
	for i := range 3 {
		if v := l.take("a", limit, at(0), true); !v.ok {
			t.Fatalf("request %d of a burst of 3 refused", i)
		}
	}
	v := l.take("a", limit, at(0), true)
	if v.ok || !v.firstRefusal || v.retry != 500*time.Millisecond {
		t.Fatalf("4th request: %+v, want refused, first, retry in 500ms", v)
	}
	if v := l.take("a", limit, at(100*time.Millisecond), true); v.ok || v.firstRefusal {
		t.Fatalf("5th request: %+v, want refused, not first", v)
	}
	if v := l.take("a", limit, at(500*time.Millisecond), true); !v.ok {
		t.Fatalf("after 500ms at 2/s: %+v, want a token", v)
	}
	// A check (a watch opening) spends nothing.
	for range 5 {
		if v := l.take("b", limit, at(0), false); !v.ok {
			t.Fatal("a check refused with a full bucket")
		}
	}
	// Charges after the fact go into debt, at most one burst deep.
	for range 10 {
		l.charge("b", limit, at(0))
	}
	if v := l.take("b", limit, at(0), false); v.ok || v.retry != 2*time.Second {
		t.Fatalf("after 10 charges: %+v, want refused for 2s (from -3 to 1 token at 2/s)", v)
	}
	if v := l.take("b", limit, at(2*time.Second), true); !v.ok {
		t.Fatalf("after paying the debt off: %+v", v)
	}
	// No limit: no bucket.
	if v := l.take("c", RateLimit{}, at(0), true); !v.ok || l.size() != 2 {
		t.Fatalf("unlimited: %+v with %d buckets", v, l.size())
	}
	// A sweep drops the buckets that filled up again.
	for i := range minSweep {
		l.take(string(rune('A'+i)), limit, at(3*time.Second), true)
	}
	l.take("trigger", limit, at(10*time.Second), true)
	if n := l.size(); n != 1 {
		t.Errorf("%d buckets after a sweep at which all but the new one are full", n)
	}
}

// TestBodyBudget: bodies held at once are counted together, declared or
// streamed, and given back when done.
func TestBodyBudget(t *testing.T) {
	var held atomic.Int64
	a := &budgetReader{r: strings.NewReader(""), held: &held}
	if err := a.take(bodyBudget - 10); err != nil {
		t.Fatal(err)
	}
	b := &budgetReader{r: strings.NewReader(strings.Repeat("x", 100)), held: &held}
	if _, err := io.ReadAll(b); !errors.Is(err, errBodyBudget) {
		t.Fatalf("a streamed body past the budget: %v", err)
	}
	if err := (&budgetReader{held: &held}).take(11); !errors.Is(err, errBodyBudget) {
		t.Fatalf("a declared body past the budget: %v", err)
	}
	b.release()
	a.release()
	if held.Load() != 0 {
		t.Fatalf("%d bytes still held after every body was released", held.Load())
	}
	c := &budgetReader{r: strings.NewReader("value=x"), held: &held}
	if got, err := io.ReadAll(c); err != nil || string(got) != "value=x" || held.Load() != 7 {
		t.Fatalf("an ordinary body: %q %v, %d held", got, err, held.Load())
	}
	c.release()
}
