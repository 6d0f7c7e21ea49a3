package mirror

import (
	"context"
	"errors"
	"fmt"
)

// Comparison is the source prefix set against the destination's copy, as
// Verify and SetIndex found them.
type Comparison struct {
	// SourceIndex is the source index (v3: revision) the source tree was
	// read at; SourceCluster the source's cluster ID.
	SourceIndex   uint64
	SourceCluster string
	// SourcePrefix and DestinationBase are the two subtrees compared.
	SourcePrefix, DestinationBase string
	// Keys counts the destination keys the source tree maps to.
	Keys int
	// Differences describe, one line each, what differs: a key missing on
	// the destination, one only there, a value, a type or an expiry.
	Differences []string
}

// Equal reports whether the destination matches the source.
func (c *Comparison) Equal() bool { return len(c.Differences) == 0 }

// Summary is one line saying whether and how the trees differ.
func (c *Comparison) Summary() string {
	if c.Equal() {
		return fmt.Sprintf("destination %s matches source %s at source index %d (%d keys)",
			c.DestinationBase, c.SourcePrefix, c.SourceIndex, c.Keys)
	}
	return fmt.Sprintf("%d differences between destination %s and source %s at source index %d (%d source keys)",
		len(c.Differences), c.DestinationBase, c.SourcePrefix, c.SourceIndex, c.Keys)
}

func (m *Mirror) exported(cmp *comparison) *Comparison {
	c := &Comparison{SourceIndex: cmp.index, SourceCluster: cmp.clusterID, SourcePrefix: m.keys.srcRoot,
		DestinationBase: m.keys.dstBase, Keys: cmp.compared}
	for _, d := range cmp.diffs {
		c.Differences = append(c.Differences, d.String())
	}
	return c
}

// Verify compares the source prefix with the destination's copy once. It
// retries unreachable clusters until ctx ends; the error then says what
// failed last.
func (m *Mirror) Verify(ctx context.Context) (*Comparison, error) {
	cmp, err := m.compare(ctx)
	if err != nil {
		return nil, m.withLastError(err)
	}
	return m.exported(cmp), nil
}

// ErrTreesDiffer is SetIndex's answer when the trees differ: nothing was
// recorded.
var ErrTreesDiffer = errors.New("the destination differs from the source; index not recorded")

// IndexRecord is what SetIndex did.
type IndexRecord struct {
	*Comparison
	// IndexKey is where the index was recorded, Previous what it held
	// before (when HadPrevious).
	IndexKey    string
	Previous    uint64
	HadPrevious bool
}

// SetIndex is the switchover step: when the trees match, it records on the
// destination the source index (v3: revision) they match at, so that a
// mirror started with the same configuration replicates from there without
// a reload. It takes the destination lock for the time it writes, so it
// refuses (*LockedError) while a mirror runs. When the trees differ, it
// returns the comparison and ErrTreesDiffer.
func (m *Mirror) SetIndex(ctx context.Context) (IndexRecord, error) {
	rec := IndexRecord{IndexKey: m.keys.indexKey()}
	saved, err := m.loadState(ctx)
	if err != nil {
		return rec, m.withLastError(err)
	}
	rec.Previous, rec.HadPrevious = saved.index, saved.hasIndex
	cmp, err := m.compare(ctx)
	if err != nil {
		return rec, m.withLastError(err)
	}
	rec.Comparison = m.exported(cmp)
	if err := m.checkOverlap(cmp.clusterID); err != nil {
		return rec, err
	}
	if len(cmp.diffs) > 0 {
		return rec, ErrTreesDiffer
	}
	if err := m.acquireLock(ctx, false); err != nil {
		return rec, m.withLastError(err)
	}
	defer m.releaseLock(ctx)
	err = m.retry(ctx, sideDestination, "write the replication index", func(ctx context.Context) error {
		if err := m.state.writeIndex(ctx, cmp.index); err != nil {
			return err
		}
		return m.state.writeState(ctx, func(s *replicationState) {
			m.identify(s, cmp.clusterID)
			s.MayHaveAppliedThrough = cmp.index
			s.Resyncing = false
		})
	})
	if err != nil {
		return rec, m.withLastError(err)
	}
	return rec, nil
}

// withLastError adds the last retried failure to an error that ends a
// one-shot command (typically a timeout, which alone says nothing).
func (m *Mirror) withLastError(err error) error {
	if s := m.Status(); s.LastError != "" && !isVerdict(err) && !errors.As(err, new(*LockedError)) {
		return fmt.Errorf("%w (last error: %s)", err, s.LastError)
	}
	return err
}
