package mirror

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	client "go.etcd.io/etcd/client/v2"
)

// workload writes random changes to a source cluster: every v2 action on a
// small set of keys (so that keys change many times), directories, TTLs,
// in-order keys, empty values, ignored and hidden keys under the prefix,
// and noise beside it, including a sibling directory whose name is a string
// prefix of the replicated one (etcd leaks its deletion into history
// replays of the prefix).
type workload struct {
	keys    client.KeysAPI
	prefix  string // e.g. /src
	sibling string // e.g. /sr: a string prefix of prefix, not a path prefix
	rng     *rand.Rand
	ops     atomic.Int64
	last    atomic.Uint64 // index of the last successful write
}

func newWorkload(keys client.KeysAPI, prefix string, seed uint64) *workload {
	return &workload{keys: keys, prefix: prefix, sibling: prefix[:len(prefix)-1],
		rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

func (w *workload) key() string {
	dirs := []string{"", "/a", "/a/b", "/c", "/ttl"}
	return fmt.Sprintf("%s%s/k%d", w.prefix, dirs[w.rng.IntN(len(dirs))], w.rng.IntN(6))
}

func (w *workload) value() string {
	if w.rng.IntN(8) == 0 {
		return "" // empty values cannot be compared with prevValue
	}
	return fmt.Sprintf("v%d", w.rng.IntN(1000))
}

// step performs one random operation. Failures that the random choice
// makes likely (compare failed, key missing, ...) are part of the game.
func (w *workload) step(ctx context.Context) {
	var resp *client.Response
	var err error
	k := w.key()
	switch op := w.rng.IntN(100); {
	case op < 20:
		resp, err = w.keys.Set(ctx, k, w.value(), nil)
	case op < 27:
		resp, err = w.keys.Set(ctx, k, w.value(), &client.SetOptions{PrevExist: client.PrevNoExist})
	case op < 34:
		resp, err = w.keys.Set(ctx, k, w.value(), &client.SetOptions{PrevExist: client.PrevExist})
	case op < 44: // compare-and-swap, by value or by index
		cur, gerr := w.keys.Get(ctx, k, nil)
		if gerr != nil || cur.Node.Dir {
			return
		}
		opts := &client.SetOptions{PrevIndex: cur.Node.ModifiedIndex}
		if cur.Node.Value != "" && w.rng.IntN(2) == 0 {
			opts = &client.SetOptions{PrevValue: cur.Node.Value}
		}
		resp, err = w.keys.Set(ctx, k, w.value(), opts)
	case op < 51: // compare-and-delete
		cur, gerr := w.keys.Get(ctx, k, nil)
		if gerr != nil || cur.Node.Dir {
			return
		}
		opts := &client.DeleteOptions{PrevIndex: cur.Node.ModifiedIndex}
		if cur.Node.Value != "" && w.rng.IntN(2) == 0 {
			opts = &client.DeleteOptions{PrevValue: cur.Node.Value}
		}
		resp, err = w.keys.Delete(ctx, k, opts)
	case op < 58:
		resp, err = w.keys.Delete(ctx, k, nil)
	case op < 61: // a whole directory
		dirs := []string{"/a", "/a/b", "/c", "/ttl", "/queue"}
		resp, err = w.keys.Delete(ctx, w.prefix+dirs[w.rng.IntN(len(dirs))], &client.DeleteOptions{Recursive: true})
	case op < 64:
		resp, err = w.keys.Set(ctx, fmt.Sprintf("%s/d%d", w.prefix, w.rng.IntN(3)), "", &client.SetOptions{Dir: true})
	case op < 67: // a file turned into a directory
		resp, err = w.keys.Set(ctx, k, "", &client.SetOptions{Dir: true})
	case op < 72: // TTLs: long ones survive the test, short ones expire during it
		ttl := 10 * time.Minute
		if w.rng.IntN(3) == 0 {
			ttl = time.Duration(1+w.rng.IntN(2)) * time.Second
		}
		resp, err = w.keys.Set(ctx, fmt.Sprintf("%s/ttl/t%d", w.prefix, w.rng.IntN(5)), w.value(), &client.SetOptions{TTL: ttl})
	case op < 77:
		resp, err = w.keys.CreateInOrder(ctx, w.prefix+"/queue", w.value(), nil)
	case op < 81: // ignored by the regex
		resp, err = w.keys.Set(ctx, fmt.Sprintf("%s/locks/etcd/l%d", w.prefix, w.rng.IntN(3)), w.value(), nil)
	case op < 84:
		resp, err = w.keys.Delete(ctx, w.prefix+"/locks", &client.DeleteOptions{Recursive: true})
	case op < 87: // hidden
		resp, err = w.keys.Set(ctx, fmt.Sprintf("%s/_hidden/h%d", w.prefix, w.rng.IntN(3)), w.value(), nil)
	case op < 89:
		resp, err = w.keys.Delete(ctx, w.prefix+"/_hidden", &client.DeleteOptions{Recursive: true})
	case op < 95: // outside the prefix
		resp, err = w.keys.Set(ctx, fmt.Sprintf("/elsewhere/k%d", w.rng.IntN(20)), w.value(), nil)
	default: // a sibling directory created and deleted
		resp, err = w.keys.Set(ctx, w.sibling+"/x", w.value(), nil)
		if err == nil {
			resp, err = w.keys.Delete(ctx, w.sibling, &client.DeleteOptions{Recursive: true})
		}
	}
	w.ops.Add(1)
	if err == nil && resp != nil {
		for {
			old := w.last.Load()
			if resp.Index <= old || w.last.CompareAndSwap(old, resp.Index) {
				break
			}
		}
	}
}

func (w *workload) run(ctx context.Context, n int) {
	for i := 0; i < n && ctx.Err() == nil; i++ {
		w.step(ctx)
	}
}

// runFor keeps writing until ctx ends, pausing between operations so that
// the rate stays near perSecond.
func (w *workload) runFor(ctx context.Context, perSecond int) {
	tick := time.NewTicker(time.Second / time.Duration(perSecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			w.step(ctx)
		}
	}
}

func TestRandomWorkloadReplicatesExactly(t *testing.T) {
	for _, c := range []struct {
		name           string
		srcPrefix      string
		dstPrefix      string
		strip          bool
		dstRoot        string // where the source prefix lands
		ignore, filter string
	}{
		{"prefix", "/src", "/replica", false, "/replica/src", `/src/locks(/.*)?`, `/src/locks(/.*)?`},
		{"strip", "/src", "/dst", true, "/dst", `/src/locks(/.*)?`, `/src/locks(/.*)?`},
		{"whole keyspace", "/", "/", false, "/", `/src/locks(/.*)?`, `/src/locks(/.*)?`},
	} {
		t.Run(c.name, func(t *testing.T) {
			src, dst := newPair(t)
			cfg := baseConfig(t, src, dst)
			cfg.SourcePrefix, cfg.DestinationPrefix, cfg.Strip = c.srcPrefix, c.dstPrefix, c.strip
			cfg.IgnoreKeys = c.ignore
			cfg.Reload = true
			w := newWorkload(src.Client(), "/src", uint64(len(c.name)))
			ctx := context.Background()
			w.run(ctx, 150) // some state before the first copy
			m := startMirror(t, cfg)

			w.run(ctx, 600) // replicated live
			m.waitApplied(t, sentinel(t, src, "/src"))
			waitTreesEqual(t, src, dst, c.srcPrefix, c.dstRoot, cfg.ignoreRegexp(t))

			// Stopped, then caught up from etcd's history: replays include
			// hidden keys and the sibling's deletion, which live watches
			// never deliver.
			if err := m.stop(t); err != nil {
				t.Fatalf("mirror stopped with %v", err)
			}
			w.run(ctx, 400)
			cfg.Reload = false
			m2 := startMirror(t, cfg)
			m2.waitApplied(t, sentinel(t, src, "/src"))
			waitTreesEqual(t, src, dst, c.srcPrefix, c.dstRoot, cfg.ignoreRegexp(t))
			st := m2.Status()
			if st.Resyncs != 0 {
				t.Errorf("catching up from history resynchronised %d times", st.Resyncs)
			}
			if st.Ignored == 0 {
				t.Error("no event was ignored although ignored, hidden and sibling keys changed")
			}
			t.Logf("%d operations; catch-up status %+v", w.ops.Load(), st)
		})
	}
}
