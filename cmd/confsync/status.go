package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/confsync/confsync/agent"
	"github.com/confsync/confsync/gate"
	"github.com/confsync/confsync/mirror"
	"github.com/confsync/confsync/relay"
)

func statusCommand() command {
	return command{
		name:     "status",
		summary:  "show a running agent, mirror, gate or relay, for a person at a shell",
		synopsis: `confsync status [-warn-age 5m] [-crit-age 30m] [-warn-failed 1] [-crit-failed 5] [URL]`,
		description: `Reads the /status of a running confsync daemon (the agent's by default,
http://127.0.0.1:9105/status; give the -metrics-addr of a relay or gate, or
the port of a mirror, as http://HOST:PORT/status) and prints what it is
connected to, how old its data is, what fails and why, then exits with the
code confsync check would: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

  agent   the watch (prefix, endpoint, stream or long poll, index), the data
          age of each root that is not current, every failing resource with
          its last error; thresholds as confsync check
  mirror  source and destination, phase, applied and source index, lag, the
          destination lock, the last error; CRITICAL when replication has
          stalled or stopped, WARNING when it lags -warn-age or more
  gate    listener, read-only or writable, upstreams and the preferred one's
          health (asked now), open watches; CRITICAL when no upstream answers
  relay   the upstream watch, data age, history, watchers; thresholds on the
          data age as for the agent`,
		run: runStatus,
		flags: func() *flag.FlagSet {
			var f checkFlags
			return statusFlagSet(&f)
		},
	}
}

func statusFlagSet(f *checkFlags) *flag.FlagSet {
	fs := checkFlagSet(f)
	fs.Init("status", flag.ContinueOnError)
	return fs
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var f checkFlags
	fs := statusFlagSet(&f)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, commandHelp("status")) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return checkOK
		}
		return checkUnknown
	}
	switch fs.NArg() {
	case 0:
	case 1:
		f.url = fs.Arg(0)
	default:
		fmt.Fprintf(stderr, "confsync status: one URL at most, got %q\n", fs.Args())
		return checkUnknown
	}
	raw, err := fetchRaw(ctx, f.url, f.timeout)
	if err != nil {
		fmt.Fprintf(stdout, "CONFSYNC UNKNOWN - %v\n", err)
		return checkUnknown
	}
	var kind struct{ Kind string }
	json.Unmarshal(raw, &kind)
	show, ok := statusViews[kind.Kind]
	if !ok {
		fmt.Fprintf(stdout, "CONFSYNC UNKNOWN - %s is not the /status of a confsync daemon (kind %q)\n", f.url, kind.Kind)
		return checkUnknown
	}
	code, err := show(stdout, raw, f, time.Now())
	if err != nil {
		fmt.Fprintf(stdout, "CONFSYNC UNKNOWN - %s: %v\n", f.url, err)
		return checkUnknown
	}
	return code
}

// statusViews print one kind of daemon's status and judge it.
var statusViews = map[string]func(w io.Writer, raw []byte, f checkFlags, now time.Time) (int, error){
	"agent":  showAgent,
	"mirror": showMirror,
	"gate":   showGate,
	"relay":  showRelay,
}

func fetchRaw(ctx context.Context, url string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("status at %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status at %s: %s", url, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 32<<20))
}

func showAgent(w io.Writer, raw []byte, f checkFlags, now time.Time) (int, error) {
	var st agent.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return 0, err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	ready := "not ready (some resources have never been rendered)"
	if st.Ready {
		ready = "ready"
	}
	fmt.Fprintf(tw, "confsync agent\tup %s, %s\n", age(now.Sub(st.Started)), ready)
	wt := st.Watch
	conn := "connected"
	switch {
	case wt.FromCache:
		conn = "serving the last-known-good cache"
	case !wt.Connected:
		conn = "disconnected: " + wt.LastError
	}
	fmt.Fprintf(tw, "watch\t%s on %s (%s), index %d, %s, data %s\n", wt.Prefix, wt.Endpoint, wt.Mode, wt.Index, conn, dataAge(wt.AgeSeconds))
	if len(wt.Buffering) > 0 {
		fmt.Fprintf(tw, "\tstreams held back by: %s\n", strings.Join(wt.Buffering, ", "))
	}
	stale := 0
	for _, r := range st.Roots {
		if r.AgeSeconds != 0 {
			stale++
			fmt.Fprintf(tw, "root\t%s: %d keys, data %s\n", r.Root, r.Keys, dataAge(r.AgeSeconds))
		}
	}
	fmt.Fprintf(tw, "roots\t%d, %d current\n", len(st.Roots), len(st.Roots)-stale)
	rendered, failing := 0, 0
	for _, r := range st.Resources {
		if r.Applied {
			rendered++
		}
		if !r.Healthy && (r.LastError != "" || r.ConfigError != "") {
			failing++
		}
	}
	fmt.Fprintf(tw, "resources\t%d: %d rendered, %d failing\n", len(st.Resources), rendered, failing)
	for _, r := range st.Resources {
		switch {
		case r.ConfigError != "":
			fmt.Fprintf(tw, "  FAIL %s\tconfig: %s (the previous version runs)\n", r.Name, oneLine(r.ConfigError))
		case !r.Healthy && r.LastError != "":
			fmt.Fprintf(tw, "  FAIL %s\t%s, %d in a row: %s\n", r.Name, r.LastErrorKind, r.Failures, oneLine(r.LastError))
		}
	}
	for _, fe := range st.FailedFiles {
		fmt.Fprintf(tw, "  FAIL %s\tdoes not load: %s\n", fe.File, oneLine(fe.Error))
	}
	tw.Flush()
	code, line := judge(&st, f, now)
	fmt.Fprintln(w, line)
	return code, nil
}

func showMirror(w io.Writer, raw []byte, f checkFlags, now time.Time) (int, error) {
	var st mirror.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return 0, err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "confsync mirror\t%s\n", st.Phase)
	fmt.Fprintf(tw, "source\t%s %s\n", st.Source, st.SourcePrefix)
	fmt.Fprintf(tw, "destination\t%s %s\n", st.Destination, st.DestinationPrefix)
	fmt.Fprintf(tw, "index\tapplied %d, source at %d, lag %d events / %s\n", st.AppliedIndex, st.SourceIndex, st.LagEvents,
		age(time.Duration(st.LagSeconds*float64(time.Second))))
	fmt.Fprintf(tw, "events\t%d applied, %d replayed, %d ignored; %d resyncs, %d lock losses\n",
		st.Applied, st.Replayed, st.Ignored, st.Resyncs, st.LockLosses)
	if st.LastError != "" {
		fmt.Fprintf(tw, "last error\t%s ago: %s\n", age(now.Sub(st.LastErrorAt)), oneLine(st.LastError))
	}
	tw.Flush()
	lag := time.Duration(st.LagSeconds * float64(time.Second))
	code, what := checkOK, fmt.Sprintf("%s, lag %d events", st.Phase, st.LagEvents)
	switch {
	case !st.Healthy || st.Phase == "stopped":
		code, what = checkCritical, fmt.Sprintf("%s: no progress since %s", st.Phase, st.LastProgress.Format(time.RFC3339))
	case lag >= f.critAge:
		code, what = checkCritical, fmt.Sprintf("%s behind the source", age(lag))
	case lag >= f.warnAge:
		code, what = checkWarning, fmt.Sprintf("%s behind the source", age(lag))
	}
	fmt.Fprintf(w, "CONFSYNC %s - mirror %s | lag_events=%d lag=%.0fs;%.0f;%.0f\n", stateName(code), what, st.LagEvents,
		lag.Seconds(), f.warnAge.Seconds(), f.critAge.Seconds())
	return code, nil
}

func showGate(w io.Writer, raw []byte, _ checkFlags, _ time.Time) (int, error) {
	var st gate.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return 0, err
	}
	mode := "writable"
	if st.ReadOnly {
		mode = "read-only"
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "confsync gate\tlistening on %s, %s, %d open watches\n", st.Listen, mode, st.OpenWatches)
	health := "answers"
	if st.UpstreamError != "" {
		health = "does not answer: " + oneLine(st.UpstreamError)
	}
	fmt.Fprintf(tw, "upstreams\t%s (preferred %s, which %s)\n", strings.Join(st.Upstreams, ", "), st.Preferred, health)
	tw.Flush()
	code, what := checkOK, "upstream "+st.Preferred+" answers"
	if st.UpstreamError != "" {
		code, what = checkCritical, "no upstream answers"
	}
	fmt.Fprintf(w, "CONFSYNC %s - gate %s, %s | open_watches=%d\n", stateName(code), mode, what, st.OpenWatches)
	return code, nil
}

func showRelay(w io.Writer, raw []byte, f checkFlags, now time.Time) (int, error) {
	var st relay.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return 0, err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "confsync relay\tup %s, index %d, data %s\n", age(now.Sub(st.Started)), st.Index, dataAge(st.AgeSeconds))
	if wt := st.Watch; wt != nil {
		conn := "connected"
		switch {
		case wt.FromCache:
			conn = "serving the last-known-good cache"
		case !wt.Connected:
			conn = "disconnected: " + oneLine(wt.LastError)
		}
		fmt.Fprintf(tw, "watch\t%s on %s (%s), index %d, %s\n", wt.Prefix, wt.Endpoint, wt.Mode, wt.Index, conn)
	}
	fmt.Fprintf(tw, "history\t%d of %d events kept, resumable from index %d\n", st.History.Events, st.History.Limit, st.History.Floor)
	fmt.Fprintf(tw, "watchers\t%d long polls, %d streams\n", st.Watchers.LongPoll, st.Watchers.Stream)
	tw.Flush()
	stale := time.Duration(st.AgeSeconds * float64(time.Second))
	code, what := checkOK, "serving current data"
	switch {
	case !st.Ready || st.AgeSeconds < 0:
		code, what = checkCritical, "no data to serve: etcd has not answered and there was no cache"
	case stale >= f.critAge:
		code, what = checkCritical, fmt.Sprintf("serving data %s old", age(stale))
	case stale >= f.warnAge:
		code, what = checkWarning, fmt.Sprintf("serving data %s old", age(stale))
	}
	fmt.Fprintf(w, "CONFSYNC %s - relay %s | age=%.0fs;%.0f;%.0f watchers=%d\n", stateName(code), what,
		math.Max(st.AgeSeconds, 0), f.warnAge.Seconds(), f.critAge.Seconds(), st.Watchers.LongPoll+st.Watchers.Stream)
	return code, nil
}

func stateName(code int) string {
	return [...]string{"OK", "WARNING", "CRITICAL", "UNKNOWN"}[code]
}

// dataAge says how old data is from its age in seconds (-1: never had any).
func dataAge(seconds float64) string {
	switch {
	case seconds < 0:
		return "never fetched"
	case seconds == 0:
		return "current"
	}
	return age(time.Duration(seconds*float64(time.Second))) + " old"
}

func age(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}
