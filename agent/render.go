package agent

import (
	"context"
	"fmt"
	"sync"

	"github.com/confsync/confsync/backends"
)

// FetchAll reads every root once, in parallel. A root that cannot be read
// is absent from the result and its error is in errs, by root.
func FetchAll(ctx context.Context, src backends.Source, roots []string) (Snapshots, map[string]error) {
	snaps := Snapshots{}
	errs := map[string]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, root := range roots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			snap, err := src.Fetch(ctx, root)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs[root] = err
				return
			}
			snaps[root] = snap
		}()
	}
	wg.Wait()
	return snaps, errs
}

// RenderOnce fetches what the resources need (one request per distinct
// root), applies every resource, then runs the due reload commands once
// each. Resources whose data could not be fetched fail with KindFetch and
// leave their files alone; the others are processed regardless.
func RenderOnce(ctx context.Context, src backends.Source, resources []*Resource, opts Options) []Outcome {
	snaps, fetchErrs := FetchAll(ctx, src, Roots(resources))
	outcomes := make([]Outcome, len(resources))
	ApplyAll(ctx, resources, snaps, fetchErrs, opts, outcomes)
	var reloads Reloads
	for i, o := range outcomes {
		reloads.Add(i, o)
	}
	reloads.Run(ctx, outcomes, opts.logger())
	return outcomes
}

// ApplyAll applies resources into outcomes (same indexes). Resources that
// share a destination run one after the other, in order; the rest run in
// parallel.
func ApplyAll(ctx context.Context, resources []*Resource, snaps Snapshots, fetchErrs map[string]error, opts Options, outcomes []Outcome) {
	byDest := map[string][]int{}
	var dests []string
	for i, r := range resources {
		if _, ok := byDest[r.Dest]; !ok {
			dests = append(dests, r.Dest)
		}
		byDest[r.Dest] = append(byDest[r.Dest], i)
	}
	work := make(chan string)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for dest := range work {
				for _, i := range byDest[dest] {
					outcomes[i] = applyOne(ctx, resources[i], snaps, fetchErrs, opts)
				}
			}
		}()
	}
	for _, d := range dests {
		work <- d
	}
	close(work)
	wg.Wait()
}

func applyOne(ctx context.Context, r *Resource, snaps Snapshots, fetchErrs map[string]error, opts Options) Outcome {
	for root, err := range fetchErrs {
		for _, k := range r.PrefixedKeys {
			if backends.Covers(root, k) {
				return Outcome{Resource: r, Kind: KindFetch, Err: fmt.Errorf("keys under %s: %w", root, err)}
			}
		}
	}
	return r.Apply(ctx, r.View(snaps), opts)
}
