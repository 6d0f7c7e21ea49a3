package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/confsync/confsync/internal/fixture"
	"github.com/confsync/confsync/internal/udiff"
)

// The hosts and records the story changes.
var (
	depooled = []string{
		fixture.PoolKey("eqiad", "appserver", "apache2", "mw1105.eqiad.wmnet"),
		fixture.PoolKey("eqiad", "appserver", "nginx", "mw1105.eqiad.wmnet"),
	}
	depooledLater = []string{
		fixture.PoolKey("eqiad", "appserver", "apache2", "mw1106.eqiad.wmnet"),
		fixture.PoolKey("eqiad", "appserver", "nginx", "mw1106.eqiad.wmnet"),
	}
	discoveryEqiad = fixture.Prefix + "/discovery/appservers-rw/eqiad"
	discoveryCodfw = fixture.Prefix + "/discovery/appservers-rw/codfw"
	poolFile       = "srv/config-master/pybal/eqiad/appservers-https"
	dshFile        = "etc/dsh/group/mediawiki-installation"
	discoveryFile  = "var/lib/gdnsd/discovery-appservers-rw.state"
)

func (d *demo) story(ctx context.Context) error {
	steps := []struct {
		title string
		run   func(context.Context) error
	}{
		{"Take mw1105 out of service on the master (conftool: pooled=inactive on each of its services)", d.depool},
		{"Fail appservers-rw over from eqiad to codfw on the master (a discovery record flip)", d.flipDiscovery},
		{"Try to write to the replica through the gate", d.writeThroughGate},
		{"The master's etcd goes away", d.masterOutage},
		{"The replica's etcd, which the agent reads, goes away", d.replicaOutage},
		{"The agent restarts while the replica is away", d.restartAgent},
		{"The replica returns", d.replicaReturns},
	}
	for i, s := range steps {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		fmt.Fprintln(d.out)
		d.say("Step %d. %s.", i+1, s.title)
		if err := s.run(ctx); err != nil {
			return fmt.Errorf("step %d (%s): %w", i+1, s.title, err)
		}
	}
	fmt.Fprintln(d.out)
	d.say("The story is over: every change reached the files, and nothing was lost while etcd was away.")
	return nil
}

func (d *demo) depool(ctx context.Context) error {
	return d.changeAndShow(ctx, func() error {
		for _, k := range depooled {
			if _, err := d.master.Client().Set(ctx, k, fixture.NodeValue(0, "inactive"), nil); err != nil {
				return err
			}
		}
		return nil
	}, map[string]func(string) bool{
		poolFile: func(s string) bool { return !strings.Contains(s, "mw1105") },
		dshFile:  func(s string) bool { return !strings.Contains(s, "mw1105") },
	})
}

func (d *demo) flipDiscovery(ctx context.Context) error {
	// Depool first, then pool: appservers-rw is active/passive, and the
	// resource's check refuses a state with both datacenters UP.
	return d.changeAndShow(ctx, func() error {
		if _, err := d.master.Client().Set(ctx, discoveryEqiad, fixture.DiscoveryValue(false, 300), nil); err != nil {
			return err
		}
		_, err := d.master.Client().Set(ctx, discoveryCodfw, fixture.DiscoveryValue(true, 300), nil)
		return err
	}, map[string]func(string) bool{
		discoveryFile: func(s string) bool {
			return strings.Contains(s, "10.2.1.1 => UP") && strings.Contains(s, "10.2.2.1 => DOWN")
		},
	})
}

// writeThroughGate shows the read-only gate refusing a write, even with
// good credentials, while reads pass.
func (d *demo) writeThroughGate(ctx context.Context) error {
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: d.pki.ClientTLS(false)}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	url := d.gateURL + "/v2/keys" + depooled[0]
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, url, strings.NewReader("value="+fixture.NodeValue(10, "yes")))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("conftool", "demo")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	d.say("  PUT %s as conftool -> %s %s", strings.TrimPrefix(url, d.gateURL), resp.Status, bytes.TrimSpace(body))
	if resp.StatusCode != http.StatusForbidden {
		return fmt.Errorf("the read-only gate let a write through: %s", resp.Status)
	}
	resp, err = client.Get(d.gateURL + "/v2/keys" + depooled[0])
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d.say("  GET of the same key -> %s (reads pass; the agent's watches through the gate stay open)", resp.Status)
	return nil
}

func (d *demo) masterOutage(ctx context.Context) error {
	before, _ := d.snapshot()
	d.master.Stop()
	d.say("  Stopped the master. The mirror cannot read it and retries with backoff:")
	if err := d.waitFor(ctx, "the mirror to notice", func() bool {
		var st struct {
			LastError string `json:"last_error"`
		}
		return d.getJSON("http://"+d.mirror.addr+"/status", &st) == nil && st.LastError != ""
	}); err != nil {
		return err
	}
	var st map[string]any
	d.getJSON("http://"+d.mirror.addr+"/status", &st)
	d.say("  mirror /status: phase=%v applied_index=%v lag_events=%v last_error=%q", st["phase"], st["applied_index"], st["lag_events"], truncate(fmt.Sprint(st["last_error"]), 90))
	after, _ := d.snapshot()
	d.say("  The agent reads the replica, which still answers: %d files, none changed (%v).", len(after), sameFiles(before, after))
	if err := d.master.Restart(); err != nil {
		return err
	}
	d.say("  Restarted the master; the mirror resumes from the index it recorded.")
	return nil
}

func (d *demo) replicaOutage(ctx context.Context) error {
	before, _ := d.snapshot()
	d.replica.Stop()
	if err := d.waitFor(ctx, "the agent to report stale data", func() bool {
		st := d.agentStatus()
		return !st.BackendUp
	}); err != nil {
		return err
	}
	// Let the data age grow visibly before showing it.
	if err := d.waitFor(ctx, "the data to age", func() bool {
		st := d.agentStatus()
		return len(st.Roots) > 0 && st.Roots[0].AgeSeconds >= 1
	}); err != nil {
		return err
	}
	st := d.agentStatus()
	d.say("  agent /status (http://%s/status): backend_up=%t ready=%t, data age of %s: %.1fs",
		d.agent.addr, st.BackendUp, st.Ready, st.Roots[0].Root, st.Roots[0].AgeSeconds)
	after, _ := d.snapshot()
	d.say("  Files stay as they were: %d files, unchanged (%v).", len(after), sameFiles(before, after))
	for _, k := range depooledLater {
		if _, err := d.master.Client().Set(ctx, k, fixture.NodeValue(0, "inactive"), nil); err != nil {
			return err
		}
	}
	d.say("  Meanwhile mw1106 is taken out of service on the master; the replica cannot receive it yet.")
	return nil
}

func (d *demo) restartAgent(ctx context.Context) error {
	if err := d.agent.shutdown(); err != nil {
		return err
	}
	d.say("  Stopped the agent, and deleted every file it had written.")
	if err := d.clearOut(); err != nil {
		return err
	}
	start := time.Now()
	if err := d.startAgent(); err != nil {
		return err
	}
	if err := d.waitReady(ctx); err != nil {
		return err
	}
	files, _ := d.snapshot()
	st := d.agentStatus()
	d.say("  The new agent rendered all %d files from its last-known-good cache in %s, with etcd unreachable (from_cache=%t, backend_up=%t).",
		len(files), time.Since(start).Round(time.Millisecond), st.Roots[0].FromCache, st.BackendUp)
	return nil
}

func (d *demo) replicaReturns(ctx context.Context) error {
	return d.changeAndShow(ctx, func() error {
		return d.replica.Restart()
	}, map[string]func(string) bool{
		poolFile: func(s string) bool { return !strings.Contains(s, "mw1106") },
		dshFile:  func(s string) bool { return !strings.Contains(s, "mw1106") },
	})
}

// changeAndShow makes a change, waits until every named file satisfies its
// condition, and prints the time taken and the diff of every file that
// changed.
func (d *demo) changeAndShow(ctx context.Context, change func() error, want map[string]func(string) bool) error {
	before, err := d.snapshot()
	if err != nil {
		return err
	}
	start := time.Now()
	if err := change(); err != nil {
		return err
	}
	err = d.waitFor(ctx, "the files to change", func() bool {
		for f, ok := range want {
			raw, err := os.ReadFile(filepath.Join(d.outDir, f))
			if err != nil || !ok(string(raw)) {
				return false
			}
		}
		return true
	})
	if err != nil {
		return err
	}
	took := time.Since(start)
	after, _ := d.snapshot()
	changed := 0
	for _, f := range sortedKeys(after) {
		if diff := udiff.Diff("a/"+f, "b/"+f, []byte(before[f]), []byte(after[f]), 1); diff != "" {
			changed++
			fmt.Fprint(d.out, indent(diff))
		}
	}
	d.say("  %d files changed, %s after the write.", changed, took.Round(time.Millisecond))
	return nil
}

// snapshot reads every file the agent wrote, by path under the output.
func (d *demo) snapshot() (map[string]string, error) {
	files := map[string]string{}
	err := filepath.WalkDir(d.outDir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || e.Name() == outMarker || strings.HasPrefix(e.Name(), ".") {
			return err
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(d.outDir, p)
		files[rel] = string(raw)
		return nil
	})
	return files, err
}

func (d *demo) clearOut() error {
	files, err := d.snapshot()
	if err != nil {
		return err
	}
	for f := range files {
		if err := os.Remove(filepath.Join(d.outDir, f)); err != nil {
			return err
		}
	}
	return nil
}

func (d *demo) waitReady(ctx context.Context) error {
	return d.waitFor(ctx, "the agent to render every resource", func() bool { return d.agentStatus().Ready })
}

// waitReplicated waits until the mirror has applied the master's events
// through index.
func (d *demo) waitReplicated(ctx context.Context, index uint64) error {
	return d.waitFor(ctx, fmt.Sprintf("the mirror to apply the master's index %d", index), func() bool {
		return d.mirrorStatus().AppliedIndex >= index
	})
}

// waitFor polls cond until it holds, ctx ends or a minute passes.
func (d *demo) waitFor(ctx context.Context, what string, cond func() bool) error {
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return errors.New("timed out waiting for " + what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func (d *demo) getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

func (d *demo) printEndpoints() {
	fmt.Fprintln(d.out)
	d.say("Endpoints:")
	rows := [][2]string{
		{"master etcd (v2)", d.master.URL() + "/v2/keys/conftool/v1?recursive=true"},
		{"replica etcd (v2)", d.replica.URL() + "/v2/keys/conftool/v1?recursive=true"},
		{"gate (read-only, TLS)", d.gateURL + "/v2/keys/conftool/v1  (CA: " + d.pki.CAFile + ")"},
		{"gate metrics", "http://" + d.gateMetrics + "/metrics"},
		{"mirror", "http://" + d.mirror.addr + "/lag  /metrics  /status  /healthz"},
		{"agent", "http://" + d.agent.addr + "/status  /metrics  /readyz  /healthz"},
		{"rendered files", d.outDir},
	}
	for _, r := range rows {
		fmt.Fprintf(d.out, "           %-22s %s\n", r[0], r[1])
	}
}

func sameFiles(a, b map[string]string) string {
	if len(a) != len(b) {
		return "no"
	}
	for k, v := range a {
		if b[k] != v {
			return "no"
		}
	}
	return "identical"
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func indent(s string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(s, "\n") {
		if line != "" {
			b.WriteString("           " + line)
		}
	}
	return b.String()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
