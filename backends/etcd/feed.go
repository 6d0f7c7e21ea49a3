package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/internal/retry"
	client "go.etcd.io/etcd/client/v2"
)

// A Feed keeps one prefix of the cluster current with a single watch: one
// recursive GET, then a recursive watch from the index after it, on one
// connection to one member at a time. It is the list-watch-resync loop of
// Kubernetes' reflector, for etcd's v2 API.
//
// The watch is a long poll until it proves that the path to etcd delivers
// a streamed watch event by event; then it streams (stream=true), so events
// arrive on one open response with no request per event. etcd answers a
// watch whose index is still in its history with that one event and then
// never registers it, even when streamed; so the feed catches up with long
// polls and streams only from the live end. A stream is proved by asking
// for an event already seen, which etcd sends at once: if it does not
// arrive, something between us and etcd holds the stream back (a buffering
// proxy), and the feed keeps to long polls for that endpoint.
//
// Nothing is missed: every request resumes at the last index + 1; an index
// that has left etcd's 1000-event history (error 401), a cluster ID that
// changes, or a member whose index is behind ours lead to a full re-read;
// and a re-read is never allowed to go back in time (a lagging member's
// answer is retried as a quorum read). A watch silent for PollTimeout is
// registered again, which proves the member alive, and the index etcd
// reports for a registration that stays quiet moves a quiet prefix's
// resume point along with the cluster, inside the history.
type Feed struct {
	c *Client
	// transport is the feed's own, so that its one connection is not
	// shared with other requests to the cluster.
	transport *http.Transport
	cfg       FeedConfig
	logger    *slog.Logger
	resync    chan struct{}

	mu       sync.Mutex
	status   FeedStatus
	endpoint int               // index into c.endpoints of the member in use
	verdicts map[string]string // endpoint -> verdictStreams or verdictBuffers
	misses   map[string]int    // endpoint -> proving streams that came late in a row
	applied  uint64            // the highest index handed to the handler
	cluster  string            // the cluster ID the handler's data came from
}

// FeedConfig tunes a Feed. Only Prefix is required.
type FeedConfig struct {
	// Prefix is the key whose subtree is followed.
	Prefix string
	// PollTimeout bounds a long poll, and a stream is registered again
	// after this long without an event (default 10s, plus up to 20%).
	PollTimeout time.Duration
	// WatchHeaderTimeout bounds the wait for a watch's response headers,
	// which etcd sends at once; a member that does not is hung and the
	// feed moves to the next (default 5s).
	WatchHeaderTimeout time.Duration
	// ResyncInterval is the period of full re-reads (default 10m, plus up
	// to 10%; negative disables).
	ResyncInterval time.Duration
	// MinBackoff and MaxBackoff bound the delay after every endpoint has
	// failed (defaults 500ms and 30s).
	MinBackoff, MaxBackoff time.Duration
	// NoStream keeps to long polls.
	NoStream bool
	// ProofTimeout is how long a proving stream may take to deliver an
	// event etcd holds before it counts against the endpoint (default 5s).
	ProofTimeout time.Duration
	// Interval, when positive, re-reads the prefix on that period instead
	// of watching it.
	Interval time.Duration
	// Observer hears about re-reads and errors, for metrics.
	Observer FeedObserver
	Logger   *slog.Logger
}

// FeedObserver is told what a Feed does.
type FeedObserver interface {
	// Resync is a full re-read, by reason (history-cleared,
	// cluster-id-changed, index-went-backwards, periodic, requested).
	Resync(reason string)
	// WatchError is a watch request that failed.
	WatchError(err error)
	// ReadError is a full read that failed.
	ReadError(err error)
}

// FeedHandler receives, from one goroutine and in index order, what a Feed
// learns.
type FeedHandler interface {
	// Reset replaces everything known under the prefix with a full read.
	Reset(l *Listing, reason string)
	// Apply is an event at or after the last Reset's index. The feed does
	// not filter: a recursive watch also delivers hidden keys and, from
	// history, deletes of siblings whose name starts with the prefix's.
	Apply(ev *Event)
	// Progress says that nothing under the prefix changed up to index.
	Progress(index uint64)
}

// Listing is a full read of a prefix.
type Listing struct {
	Prefix string
	// Node is the prefix's node with everything below it; nil when the
	// prefix does not exist.
	Node      *Node
	Index     uint64
	ClusterID string
	At        time.Time
}

// FeedStatus is what /status shows of a Feed.
type FeedStatus struct {
	Prefix    string `json:"prefix"`
	Endpoint  string `json:"endpoint"`
	Connected bool   `json:"connected"`
	// Mode is "stream", "long-poll" or "interval".
	Mode      string `json:"mode"`
	Index     uint64 `json:"etcd_index"`
	ClusterID string `json:"cluster_id,omitempty"`
	// LastContact is when etcd last answered.
	LastContact time.Time `json:"last_contact"`
	LastError   string    `json:"last_error,omitempty"`
	// Buffering lists endpoints found to hold streamed watches back.
	Buffering []string `json:"stream_held_back_by,omitempty"`
}

const (
	modeStream   = "stream"
	modeLongPoll = "long-poll"
	modeInterval = "interval"

	verdictStreams = "streams"
	verdictBuffers = "buffers"
)

// canaryStrikes is how many proving streams in a row must come late for an
// endpoint to be found holding streams back. etcd sends the event with the
// headers; a loaded machine may be late once, a path that buffers always is.
const canaryStrikes = 3

// A Follower keeps a FeedHandler current with one prefix of a cluster: a
// Feed for etcd's v2 API, or its counterpart for another API.
type Follower interface {
	Run(ctx context.Context, h FeedHandler)
	Resync()
	Status() FeedStatus
}

// Follow returns a Feed of cfg.Prefix as a Follower.
func (c *Client) Follow(cfg FeedConfig) Follower { return c.NewFeed(cfg) }

// NewFeed prepares a feed of cfg.Prefix; Run starts it.
func (c *Client) NewFeed(cfg FeedConfig) *Feed {
	cfg.Prefix = backends.CleanKey(cfg.Prefix)
	if cfg.PollTimeout <= 0 {
		cfg.PollTimeout = 10 * time.Second
	}
	if cfg.WatchHeaderTimeout <= 0 {
		cfg.WatchHeaderTimeout = 5 * time.Second
	}
	if cfg.ProofTimeout <= 0 {
		cfg.ProofTimeout = 5 * time.Second
	}
	if cfg.ResyncInterval == 0 {
		cfg.ResyncInterval = 10 * time.Minute
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.Observer == nil {
		cfg.Observer = nopFeedObserver{}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	tr := c.transport.Clone()
	tr.MaxIdleConnsPerHost = 1
	f := &Feed{c: c, transport: tr, cfg: cfg, logger: logger.With("prefix", cfg.Prefix), resync: make(chan struct{}, 1),
		verdicts: map[string]string{}, misses: map[string]int{}}
	f.status = FeedStatus{Prefix: cfg.Prefix, Endpoint: c.endpoints[0], Mode: modeLongPoll}
	return f
}

type nopFeedObserver struct{}

func (nopFeedObserver) Resync(string)    {}
func (nopFeedObserver) WatchError(error) {}
func (nopFeedObserver) ReadError(error)  {}

// Status reports the feed's state now.
func (f *Feed) Status() FeedStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.status
	s.Buffering = nil
	for ep, v := range f.verdicts {
		if v == verdictBuffers {
			s.Buffering = append(s.Buffering, ep)
		}
	}
	return s
}

// Resync asks for a full re-read at once, as SIGHUP or an operator would.
func (f *Feed) Resync() {
	select {
	case f.resync <- struct{}{}:
	default:
	}
}

// Run follows the prefix until ctx ends.
func (f *Feed) Run(ctx context.Context, h FeedHandler) {
	defer f.transport.CloseIdleConnections()
	reason := "initial"
	for ctx.Err() == nil {
		l, ok := f.listUntilRead(ctx, reason)
		if !ok {
			return
		}
		if reason != "initial" && reason != "interval" {
			f.cfg.Observer.Resync(reason)
		}
		h.Reset(l, reason)
		f.mu.Lock()
		f.applied, f.cluster = l.Index, l.ClusterID
		f.status.Index, f.status.ClusterID = l.Index, l.ClusterID
		f.mu.Unlock()
		if f.cfg.Interval > 0 {
			reason = f.nextTick(ctx)
			continue
		}
		reason = f.follow(ctx, h, l)
		if reason != "stopped" {
			f.logger.Info("re-reading the prefix", "reason", reason)
		}
	}
}

// nextTick waits for the next read in interval mode.
func (f *Feed) nextTick(ctx context.Context) string {
	f.setMode(modeInterval)
	t := time.NewTimer(f.cfg.Interval)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return "stopped"
	case <-t.C:
		return "interval"
	case <-f.resync:
		return "requested"
	}
}

// listUntilRead reads the prefix, failing over and backing off until it
// succeeds or ctx ends.
func (f *Feed) listUntilRead(ctx context.Context, reason string) (*Listing, bool) {
	b := f.newBackoff()
	failures := 0
	for {
		l, err := f.list(ctx, reason)
		if err == nil {
			return l, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		f.failed(err)
		f.cfg.Observer.ReadError(err)
		f.logger.Warn("etcd read failed; keeping the last known data", "err", err)
		if failures++; failures%len(f.c.endpoints) == 0 && !b.Wait(ctx) {
			return nil, false
		}
	}
}

// list reads the prefix, never going back in time: a member whose answer
// is older than what the handler already has (a lagging follower) is asked
// again through raft.
func (f *Feed) list(ctx context.Context, reason string) (*Listing, error) {
	quorum := f.c.cfg.Quorum || reason == "index-went-backwards"
	l, err := f.read(ctx, quorum)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	applied, cluster := f.applied, f.cluster
	f.mu.Unlock()
	if l.ClusterID != cluster || l.Index >= applied {
		return l, nil
	}
	if !quorum {
		if l, err = f.read(ctx, true); err != nil || l.Index >= applied {
			return l, err
		}
	}
	f.logger.Error("etcd's index went back on a quorum read: the cluster was restored or replaced; following it",
		"had", applied, "now", l.Index)
	return l, nil
}

// read performs one recursive GET of the prefix on the current endpoint.
func (f *Feed) read(ctx context.Context, quorum bool) (*Listing, error) {
	q := url.Values{"recursive": {"true"}}
	if quorum {
		q.Set("quorum", "true")
	}
	rctx, cancel := context.WithTimeout(ctx, 3*f.c.cfg.RequestTimeout)
	defer cancel()
	resp, ep, err := f.request(rctx, q, f.c.cfg.RequestTimeout)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	l := &Listing{Prefix: f.cfg.Prefix, ClusterID: resp.Header.Get("X-Etcd-Cluster-Id"), At: time.Now()}
	if resp.StatusCode != http.StatusOK {
		err := answerError(resp)
		if !IsKeyNotFound(err) {
			return nil, fmt.Errorf("etcd read %s at %s: %w", f.cfg.Prefix, ep, err)
		}
		l.Index = err.(client.Error).Index
	} else {
		var body struct {
			Node *Node `json:"node"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			return nil, fmt.Errorf("etcd read %s at %s: decode the answer: %w", f.cfg.Prefix, ep, err)
		}
		if l.Index, err = headerIndex(resp); err != nil {
			return nil, fmt.Errorf("etcd read %s at %s: %w", f.cfg.Prefix, ep, err)
		}
		l.Node = body.Node
	}
	f.contact()
	return l, nil
}

// Reasons a follow ends that are not errors.
var (
	errPeriodic  = errors.New("periodic")
	errRequested = errors.New("requested")
)

// resyncNeeded ends a follow with a reason for a full re-read.
type resyncNeeded struct {
	reason string
	err    error
}

func (r *resyncNeeded) Error() string { return r.reason + ": " + r.err.Error() }

// follower is the state of one follow: where to resume, and what the last
// registration told us.
type follower struct {
	next      uint64
	clusterID string
	// silentStreamAt is the registration index of a stream that ended
	// because it stayed silent; an event at or below it, found by the next
	// long poll, is one the stream should have delivered.
	silentStreamAt uint64
	empties        int
}

// follow applies events from l's index on until something calls for a full
// re-read, and returns why.
func (f *Feed) follow(ctx context.Context, h FeedHandler, l *Listing) string {
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go f.interrupt(fctx, cancel)
	w := &follower{next: l.Index + 1, clusterID: l.ClusterID}
	b := f.newBackoff()
	failures := 0
	streaming := false
	for {
		var err error
		if streaming {
			err = f.stream(fctx, h, w)
			streaming = false
		} else {
			f.setMode(modeLongPoll)
			var live bool
			live, err = f.poll(fctx, h, w)
			streaming = err == nil && live && f.streams(fctx, w)
		}
		var resync *resyncNeeded
		switch {
		case ctx.Err() != nil:
			return "stopped"
		case fctx.Err() != nil:
			return context.Cause(fctx).Error()
		case err == nil:
			failures = 0
			b.Reset()
		case errors.As(err, &resync):
			f.cfg.Observer.WatchError(err)
			return resync.reason
		case errors.Is(err, errEmptyAnswer) && w.empties < 3:
			// etcd ends a poll with an empty 200 when it shuts down:
			// ask again at once, but not forever.
		default:
			f.failed(err)
			f.cfg.Observer.WatchError(err)
			f.logger.Warn("etcd watch failed; resuming from the last index", "next", w.next, "err", err)
			f.rotate()
			if failures++; failures%len(f.c.endpoints) == 0 && !b.Wait(fctx) {
				if ctx.Err() != nil {
					return "stopped"
				}
				return context.Cause(fctx).Error()
			}
		}
	}
}

// interrupt ends a follow when the periodic re-read is due or one is asked for.
func (f *Feed) interrupt(ctx context.Context, cancel context.CancelCauseFunc) {
	var periodic <-chan time.Time
	if f.cfg.ResyncInterval > 0 {
		t := time.NewTimer(retry.Jitter(f.cfg.ResyncInterval, 0.1))
		defer t.Stop()
		periodic = t.C
	}
	select {
	case <-ctx.Done():
	case <-periodic:
		cancel(errPeriodic)
	case <-f.resync:
		cancel(errRequested)
	}
}

var errEmptyAnswer = errors.New("etcd ended the watch without an event")

// poll is one long poll from w.next. It reports whether an event came
// live, after etcd registered the watch: the watch is then at the live end
// of the history and may stream. An event from history means more may be
// waiting there, which long polls on a kept-alive connection fetch faster
// than streams etcd would answer with one event each.
func (f *Feed) poll(ctx context.Context, h FeedHandler, w *follower) (live bool, err error) {
	pctx, cancel := context.WithTimeout(ctx, retry.Jitter(f.cfg.PollTimeout, 0.2))
	defer cancel()
	resp, registered, err := f.watch(pctx, w, false)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	registeredAt := time.Now()
	ev, err := readEvent(json.NewDecoder(resp.Body))
	switch {
	case err == nil:
		w.empties = 0
		if w.silentStreamAt != 0 && ev.Index() <= w.silentStreamAt {
			f.heldBack(f.currentEndpoint(), "a silent stream missed an event a long poll then found")
		}
		w.silentStreamAt = 0
		f.deliver(h, w, ev)
		return ev.Index() > registered, nil
	case errors.Is(err, io.EOF):
		w.empties++
		return false, errEmptyAnswer
	case pctx.Err() != nil && ctx.Err() == nil:
		w.empties, w.silentStreamAt = 0, 0
		if time.Since(registeredAt) >= quietProof {
			f.progress(h, w, registered)
		}
		return false, nil
	}
	return false, f.describeAt("watch "+f.cfg.Prefix, err)
}

// stream follows a streamed watch from w.next until it ends: etcd closed it
// (shutdown, or we fell 100 events behind), its first event came from
// history (etcd then never registers it), or it stayed silent PollTimeout.
func (f *Feed) stream(ctx context.Context, h FeedHandler, w *follower) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, registered, err := f.watch(sctx, w, true)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f.setMode(modeStream)
	defer f.setMode(modeLongPoll)
	// No quiet proof here, unlike a long poll: a path that buffers the
	// stream would hold back an event from history and make a quiet stream
	// look like proof. A stream that stays silent ends, and the long poll
	// that follows moves a quiet prefix's index along.
	events := decodeEvents(sctx, resp.Body)
	silence := time.NewTimer(retry.Jitter(f.cfg.PollTimeout, 0.2))
	defer silence.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-silence.C:
			w.silentStreamAt = registered
			return nil
		case d, ok := <-events:
			switch {
			case !ok || errors.Is(d.err, io.EOF):
				return nil
			case d.err != nil:
				return f.describeAt("stream "+f.cfg.Prefix, d.err)
			}
			f.deliver(h, w, d.ev)
			if d.ev.Index() <= registered {
				return nil // from history: this stream will say nothing more
			}
			silence.Reset(retry.Jitter(f.cfg.PollTimeout, 0.2))
		}
	}
}

// streams decides whether to stream from now on, proving the endpoint
// first if it has not been: the event just delivered is in etcd's history,
// and a stream asked for it must deliver it at once.
func (f *Feed) streams(ctx context.Context, w *follower) bool {
	if f.cfg.NoStream {
		return false
	}
	ep := f.currentEndpoint()
	f.mu.Lock()
	verdict := f.verdicts[ep]
	f.mu.Unlock()
	if verdict != "" {
		return verdict == verdictStreams
	}
	delivered, err := f.canary(ctx, w)
	if err != nil {
		f.logger.Debug("could not prove the stream; staying with long polls for now", "endpoint", ep, "err", err)
		return false
	}
	if !delivered {
		// One late delivery may be a loaded machine; a path that buffers
		// fails every time.
		f.mu.Lock()
		f.misses[ep]++
		strikes := f.misses[ep]
		f.mu.Unlock()
		if strikes >= canaryStrikes {
			f.heldBack(ep, fmt.Sprintf("%d streamed watches in a row did not deliver an event etcd holds within %s", strikes, f.cfg.ProofTimeout))
		} else {
			f.logger.Info("a proving stream was late; trying again after the next event", "endpoint", ep, "strikes", strikes)
		}
		return false
	}
	f.mu.Lock()
	f.verdicts[ep] = verdictStreams
	f.mu.Unlock()
	f.logger.Info("etcd delivers streamed watches event by event; streaming", "endpoint", ep)
	return true
}

// canary asks, on a stream, for the event just delivered (w.next-1) and
// reports whether it arrived in time.
func (f *Feed) canary(ctx context.Context, w *follower) (bool, error) {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	probe := &follower{next: w.next - 1, clusterID: w.clusterID}
	resp, _, err := f.watch(cctx, probe, true)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	events := decodeEvents(cctx, resp.Body)
	t := time.NewTimer(f.cfg.ProofTimeout)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false, ctx.Err()
	case <-t.C:
		return false, nil
	case d, ok := <-events:
		if !ok || d.err != nil {
			return false, fmt.Errorf("proving stream ended early: %v", d.err)
		}
		return true, nil
	}
}

// heldBack records that ep does not deliver streams event by event.
func (f *Feed) heldBack(ep, why string) {
	f.mu.Lock()
	first := f.verdicts[ep] != verdictBuffers
	f.verdicts[ep] = verdictBuffers
	f.mu.Unlock()
	if first {
		f.logger.Warn("streamed watches are held back on the way from etcd (a buffering proxy?); using long polls with this endpoint",
			"endpoint", ep, "evidence", why)
	}
}

// deliver hands ev to the handler and moves the resume index past it.
func (f *Feed) deliver(h FeedHandler, w *follower, ev *Event) {
	if ev.Index() < w.next {
		return
	}
	h.Apply(ev)
	w.next = ev.Index() + 1
	f.mu.Lock()
	f.applied = ev.Index()
	f.status.Index = ev.Index()
	f.mu.Unlock()
	f.contact()
}

// progress records that a registration at index stayed quiet.
func (f *Feed) progress(h FeedHandler, w *follower, index uint64) {
	if index < w.next {
		return
	}
	h.Progress(index)
	w.next = index + 1
	f.mu.Lock()
	f.applied = index
	f.status.Index = index
	f.mu.Unlock()
}

// watch registers a recursive watch from w.next and returns once etcd has
// sent its headers, with the index etcd registered it at.
func (f *Feed) watch(ctx context.Context, w *follower, stream bool) (*http.Response, uint64, error) {
	q := url.Values{"wait": {"true"}, "recursive": {"true"}, "waitIndex": {strconv.FormatUint(w.next, 10)}}
	if stream {
		q.Set("stream", "true")
	}
	resp, ep, err := f.request(ctx, q, f.cfg.WatchHeaderTimeout)
	if err != nil {
		return nil, 0, err
	}
	registered, err := f.checkWatch(resp, ep, w)
	if err != nil {
		resp.Body.Close()
		return nil, 0, err
	}
	f.contact()
	return resp, registered, nil
}

// checkWatch vets a watch's headers: an error answer, another cluster, or
// a member behind what we have already seen.
func (f *Feed) checkWatch(resp *http.Response, ep string, w *follower) (uint64, error) {
	if resp.StatusCode != http.StatusOK {
		err := fmt.Errorf("etcd watch %s at %s: %w", f.cfg.Prefix, ep, answerError(resp))
		if IsHistoryCleared(err) {
			return 0, &resyncNeeded{reason: "history-cleared", err: err}
		}
		return 0, err
	}
	if id := resp.Header.Get("X-Etcd-Cluster-Id"); id != "" && w.clusterID != "" && id != w.clusterID {
		return 0, &resyncNeeded{reason: "cluster-id-changed",
			err: fmt.Errorf("%s answers for cluster %s, not %s", ep, id, w.clusterID)}
	}
	registered, err := headerIndex(resp)
	if err != nil {
		return 0, fmt.Errorf("watch %s at %s: %w", f.cfg.Prefix, ep, err)
	}
	if registered+1 < w.next {
		return 0, &resyncNeeded{reason: "index-went-backwards",
			err: fmt.Errorf("%s is at index %d, behind the %d already seen", ep, registered, w.next-1)}
	}
	return registered, nil
}

// request sends GET <prefix>?q to the endpoint in use and waits at most
// headerTimeout for the response headers.
func (f *Feed) request(ctx context.Context, q url.Values, headerTimeout time.Duration) (*http.Response, string, error) {
	ep := f.currentEndpoint()
	u, err := url.Parse(ep + "/v2/keys")
	if err != nil {
		return nil, ep, err
	}
	u.Path += f.cfg.Prefix
	if f.cfg.Prefix == "/" {
		u.Path = "/v2/keys/"
	}
	u.RawQuery = q.Encode()
	rctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u.String(), nil)
	if err != nil {
		cancel()
		return nil, ep, err
	}
	if f.c.cfg.Username != "" {
		req.SetBasicAuth(f.c.cfg.Username, f.c.cfg.Password)
	}
	timer := time.AfterFunc(headerTimeout, cancel)
	resp, err := f.transport.RoundTrip(req)
	timedOut := !timer.Stop() && ctx.Err() == nil
	if err == nil && timedOut {
		resp.Body.Close()
	}
	if err != nil || timedOut {
		cancel()
		if timedOut {
			return nil, ep, fmt.Errorf("etcd at %s sent no answer within %s (hung?)", ep, headerTimeout)
		}
		return nil, ep, err
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, ep, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// decoded is one event read from a watch body, or why reading stopped.
type decoded struct {
	ev  *Event
	err error
}

// decodeEvents reads events from a streamed body until it ends or ctx does.
func decodeEvents(ctx context.Context, body io.Reader) <-chan decoded {
	out := make(chan decoded)
	go func() {
		defer close(out)
		dec := json.NewDecoder(body)
		for {
			ev, err := readEvent(dec)
			select {
			case out <- decoded{ev, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return out
}

// readEvent reads the next event of a watch body.
func readEvent(dec *json.Decoder) (*Event, error) {
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return nil, err
	}
	return DecodeEvent(raw)
}

// answerError reads an error answer: etcd's error body as a client.Error
// (so that IsHistoryCleared and IsKeyNotFound work), or, for an answer that
// is not one (a proxy's page), an error quoting its status and body.
func answerError(resp *http.Response) error {
	var e client.Error
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(body, &e) != nil || e.Code == 0 {
		return fmt.Errorf("HTTP %s: %q", resp.Status, truncate(body, 200))
	}
	return e
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

func headerIndex(resp *http.Response) (uint64, error) {
	v := resp.Header.Get("X-Etcd-Index")
	idx, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("answer without a valid X-Etcd-Index header (%q): is this etcd?", v)
	}
	return idx, nil
}

func (f *Feed) describeAt(what string, err error) error {
	return fmt.Errorf("etcd %s at %s: %w", what, f.currentEndpoint(), err)
}

func (f *Feed) currentEndpoint() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.c.endpoints[f.endpoint]
}

// rotate moves to the next endpoint after a failure, dropping any
// connection left idle to the one it leaves (a dial that completed after
// its request was given up ends there), so that the feed holds one
// connection at most.
func (f *Feed) rotate() {
	f.mu.Lock()
	f.endpoint = (f.endpoint + 1) % len(f.c.endpoints)
	f.status.Endpoint = f.c.endpoints[f.endpoint]
	f.mu.Unlock()
	f.transport.CloseIdleConnections()
}

func (f *Feed) setMode(mode string) {
	f.mu.Lock()
	f.status.Mode = mode
	f.mu.Unlock()
}

func (f *Feed) contact() {
	f.mu.Lock()
	f.status.Connected, f.status.LastContact, f.status.LastError = true, time.Now(), ""
	f.mu.Unlock()
}

func (f *Feed) failed(err error) {
	f.mu.Lock()
	f.status.Connected, f.status.LastError = false, err.Error()
	f.mu.Unlock()
}

func (f *Feed) newBackoff() *retry.Backoff {
	return &retry.Backoff{Min: f.cfg.MinBackoff, Max: f.cfg.MaxBackoff}
}
