package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/confsync/confsync/agent"
)

// Nagios plugin exit codes.
const (
	checkOK       = 0
	checkWarning  = 1
	checkCritical = 2
	checkUnknown  = 3
)

type checkFlags struct {
	url        string
	warnAge    time.Duration
	critAge    time.Duration
	warnFailed int
	critFailed int
	timeout    time.Duration
}

func checkFlagSet(f *checkFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.StringVar(&f.url, "url", "http://127.0.0.1:9105/status", "the agent's /status URL (see agent -metrics-addr)")
	fs.DurationVar(&f.warnAge, "warn-age", 5*time.Minute, "WARNING when any root's data is at least this old")
	fs.DurationVar(&f.critAge, "crit-age", 30*time.Minute, "CRITICAL when any root's data is at least this old")
	fs.IntVar(&f.warnFailed, "warn-failed", 1, "WARNING when at least this many resources are failing")
	fs.IntVar(&f.critFailed, "crit-failed", 5, "CRITICAL when at least this many resources are failing")
	fs.DurationVar(&f.timeout, "timeout", 10*time.Second, "give up on the agent after this long (UNKNOWN)")
	return fs
}

func checkCommand() command {
	return command{
		name:     "check",
		summary:  "Icinga/NRPE check of a running agent",
		synopsis: `confsync check [-url http://127.0.0.1:9105/status] [-warn-age 5m] [-crit-age 30m] [-warn-failed 1] [-crit-failed 5]`,
		description: `Reads the agent's /status and prints one line in the monitoring-plugin
format, with performance data, then exits 0 OK, 1 WARNING, 2 CRITICAL or 3
UNKNOWN (agent unreachable or answering nonsense).

A resource is failing when its last render, check or reload failed or its
file no longer loads. Data age is per root: zero while etcd answers, else the
time since it last did (the agent is then serving from memory or from its
last-known-good cache). A resource file that does not load at all is
CRITICAL.`,
		run: runCheck,
		flags: func() *flag.FlagSet {
			var f checkFlags
			return checkFlagSet(&f)
		},
	}
}

func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var f checkFlags
	fs := checkFlagSet(&f)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, commandHelp("check")) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return checkOK
		}
		fmt.Fprintf(stdout, "CONFSYNC UNKNOWN - %v\n", err)
		return checkUnknown
	}
	st, err := fetchStatus(ctx, f.url, f.timeout)
	if err != nil {
		fmt.Fprintf(stdout, "CONFSYNC UNKNOWN - %v\n", err)
		return checkUnknown
	}
	code, line := judge(st, f, time.Now())
	fmt.Fprintln(stdout, line)
	return code
}

func fetchStatus(ctx context.Context, url string, timeout time.Duration) (*agent.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent status at %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("agent status at %s: %s", url, resp.Status)
	}
	var st agent.Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 32<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("agent status at %s is not confsync's: %w", url, err)
	}
	return &st, nil
}

// judge turns a status into a plugin result and its one line.
func judge(st *agent.Status, f checkFlags, now time.Time) (int, string) {
	var failing []string
	for _, r := range st.Resources {
		if !r.Healthy && (r.LastError != "" || r.ConfigError != "") {
			why := r.LastErrorKind
			if r.ConfigError != "" {
				why = "config"
			}
			failing = append(failing, r.Name+" ("+why+")")
		}
	}
	sort.Strings(failing)
	maxAge := time.Duration(0)
	staleRoot := ""
	for _, r := range st.Roots {
		age := time.Duration(r.AgeSeconds * float64(time.Second))
		if r.AgeSeconds < 0 {
			age = now.Sub(st.Started) // never synced: as old as the agent
		}
		if age > maxAge {
			maxAge, staleRoot = age, r.Root
		}
	}
	code := checkOK
	var problems []string
	raise := func(c int, msg string) {
		code = max(code, c)
		problems = append(problems, msg)
	}
	switch n := len(failing); {
	case n >= f.critFailed:
		raise(checkCritical, fmt.Sprintf("%d resources failing: %s", n, strings.Join(failing, ", ")))
	case n >= f.warnFailed:
		raise(checkWarning, fmt.Sprintf("%d resources failing: %s", n, strings.Join(failing, ", ")))
	}
	if n := len(st.FailedFiles); n > 0 {
		raise(checkCritical, fmt.Sprintf("%d resource files do not load (first: %s)", n, st.FailedFiles[0].File))
	}
	switch {
	case maxAge >= f.critAge:
		raise(checkCritical, fmt.Sprintf("data for %s is %s old (etcd unreachable?)", staleRoot, maxAge.Round(time.Second)))
	case maxAge >= f.warnAge:
		raise(checkWarning, fmt.Sprintf("data for %s is %s old (etcd unreachable?)", staleRoot, maxAge.Round(time.Second)))
	}
	state := [...]string{"OK", "WARNING", "CRITICAL"}[code]
	summary := fmt.Sprintf("%d resources, %d failing, data age %s", len(st.Resources), len(failing), maxAge.Round(time.Second))
	if len(problems) > 0 {
		summary = strings.Join(problems, "; ")
	}
	perf := fmt.Sprintf("resources=%d failing=%d;%d;%d data_age=%.0fs;%.0f;%.0f",
		len(st.Resources), len(failing), f.warnFailed, f.critFailed, maxAge.Seconds(), f.warnAge.Seconds(), f.critAge.Seconds())
	return code, fmt.Sprintf("CONFSYNC %s - %s | %s", state, summary, perf)
}
