package main

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/confsync/confsync/agent"
	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/file"
	"github.com/confsync/confsync/gate"
	"github.com/confsync/confsync/mirror"
	"github.com/confsync/confsync/relay"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	metricNameRE = regexp.MustCompile(`\b((?:confsync|confd|etcdmirror|process|go)_[a-zA-Z0-9_]+)\b`)
	descNameRE   = regexp.MustCompile(`fqName: "([^"]+)"`)
)

// exportedMetrics are the names every daemon declares, counters and
// vectors that have not been touched yet included.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	var regs []*prometheus.Registry
	dir, _ := writeConfdir(t, map[string]string{
		"conf.d/r.toml": "[template]\nsrc = \"t.tmpl\"\ndest = \"{{out}}/r\"\nkeys = [\"/a\"]\n", "templates/t.tmpl": "x"})
	a, err := agent.New(agent.Config{Load: agent.LoadOptions{ConfDir: dir}, Source: &file.Source{Paths: []string{dir}},
		Options: agent.Options{Logger: slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatal(err)
	}
	regs = append(regs, a.Registry())
	m, err := mirror.New(mirror.Config{Source: etcd.Config{Endpoints: []string{"http://127.0.0.1:1"}},
		Destination: etcd.Config{Endpoints: []string{"http://127.0.0.1:2"}}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	regs = append(regs, m.Registry())
	g, err := gate.New(gate.Config{Upstreams: []string{"http://127.0.0.1:1"}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	regs = append(regs, g.Registry())
	regs = append(regs, relayRegistry(t))
	names := map[string]bool{}
	for _, reg := range regs {
		ch := make(chan *prometheus.Desc, 64)
		go func() { reg.Describe(ch); close(ch) }()
		for d := range ch {
			if m := descNameRE.FindStringSubmatch(d.String()); m != nil {
				names[m[1]] = true
			}
		}
	}
	return names
}

// Every metric the Grafana dashboard queries is one a daemon exports, so
// the dashboard cannot show empty panels after a rename.
func TestDashboardQueriesOnlyExportedMetrics(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "grafana", "confsync.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("deploy/grafana/confsync.json: %v", err)
	}
	exported := exportedMetrics(t)
	queried := map[string]bool{}
	for _, p := range dash.Panels {
		for _, target := range p.Targets {
			for _, m := range metricNameRE.FindAllString(target.Expr, -1) {
				queried[m] = true
				base := m
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					base = strings.TrimSuffix(base, suffix)
				}
				if !exported[m] && !exported[base] {
					t.Errorf("panel %q queries %s, which no daemon exports", p.Title, m)
				}
			}
		}
	}
	// And the dashboard shows what the issue asks of it.
	for _, want := range []string{"confsync_watch_data_age_seconds", "confd_resource_healthy", "confsync_resource_renders_total",
		"etcdmirror_lag", "etcdmirror_replicated_events_total", "confsync_gate_requests_total", "confsync_gate_auth_failures_total",
		"confsync_gate_request_duration_seconds_bucket", "confsync_relay_watchers"} {
		if !queried[want] {
			t.Errorf("the dashboard does not show %s", want)
		}
	}
	if t.Failed() {
		var all []string
		for n := range exported {
			all = append(all, n)
		}
		sort.Strings(all)
		t.Logf("exported: %s", strings.Join(all, " "))
	}
}

func relayRegistry(t *testing.T) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	relay.New(relay.Config{Registerer: reg, Logger: slog.New(slog.DiscardHandler)})
	return reg
}
