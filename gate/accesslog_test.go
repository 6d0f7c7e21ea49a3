package gate_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/confsync/confsync/gate"
	"github.com/confsync/confsync/internal/testutil"
)

// accessLines parses JSON lines, failing the test on a line that is not.
func accessLines(t *testing.T, data []byte) []map[string]any {
	t.Helper()
	var lines []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var l map[string]any
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("access log line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	return lines
}

// TestAccessLogRotatesAtItsSizeBound: the file never grows past its bound;
// old files are shifted and the oldest dropped, so the disk holds at most
// (Keep+1) times the bound, and whole lines only.
func TestAccessLogRotatesAtItsSizeBound(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "access.log")
	const bound = 2048
	h := newHarness(t, withConfig(func(c *gate.Config) {
		c.AccessLog = gate.AccessLogConfig{File: file, MaxBytes: bound, Keep: 2}
	}))
	h.etcd.Set(t, "/conftool/k", "v")
	for i := range 60 {
		if got := h.do(req{method: "GET", path: fmt.Sprintf("/v2/keys/conftool/k?n=%d", i)}); got.status != 200 {
			t.Fatalf("GET %d: %d", i, got.status)
		}
	}
	h.stop() // writes out the buffer

	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "access.log access.log.1 access.log.2" {
		t.Fatalf("files after 60 requests: %v, want access.log and two rotated ones", names)
	}
	var total int
	for _, name := range names {
		data, _ := os.ReadFile(filepath.Join(dir, name))
		if len(data) > bound {
			t.Errorf("%s holds %d bytes, over the %d-byte bound", name, len(data), bound)
		}
		total += len(accessLines(t, data))
	}
	last, _ := os.ReadFile(file)
	if !strings.Contains(string(last), `"uri":"/v2/keys/conftool/k?n=59"`) {
		t.Errorf("the newest line is not in %s:\n%s", file, last)
	}
	if rotations := h.metric("confsync_gate_access_log_rotations_total"); rotations < 4 {
		t.Errorf("confsync_gate_access_log_rotations_total = %v after %d lines of about 230 bytes", rotations, total)
	}
}

// TestAccessLogDropsPastItsRateAndSaysSo: past the rate bound lines are
// dropped, counted in a metric and summarised (with the clients behind
// them) in the operational log and in the access log itself; writes that
// reached etcd are always logged.
func TestAccessLogDropsPastItsRateAndSaysSo(t *testing.T) {
	access := &testutil.SyncBuffer{}
	h := newHarness(t, withConfig(func(c *gate.Config) {
		c.AccessLog = gate.AccessLogConfig{Writer: access, Limit: gate.RateLimit{Rate: 0.001, Burst: 10}}
	}))
	h.etcd.Set(t, "/conftool/k", "v")
	dropped := h.metric("confsync_gate_access_log_dropped_total")
	other := h.clientFrom("127.0.0.2")
	for i := range 40 {
		h.do(req{method: "GET", path: "/v2/keys/conftool/k"})
		if i < 5 {
			h.doVia(other, req{method: "GET", path: "/v2/keys/conftool/k"})
		}
	}
	for i := range 3 {
		if got := h.do(req{method: "PUT", path: fmt.Sprintf("/v2/keys/conftool/w%d", i), body: form("value", "x"), user: "conftool"}); got.status != 201 {
			t.Fatalf("PUT %d: %d %s", i, got.status, got.body)
		}
	}
	if got := h.metric("confsync_gate_access_log_dropped_total") - dropped; got < 30 {
		t.Errorf("%v lines dropped of 45 GETs past a burst of 10", got)
	}
	testutil.Eventually(t, "the summary of dropped lines", func() bool {
		return strings.Contains(h.logs.String(), "access log lines dropped past the rate bound")
	})
	summary := h.logs.String()
	if !strings.Contains(summary, `top_clients="127.0.0.1 (`) || !strings.Contains(summary, "127.0.0.2 (") {
		t.Errorf("the summary does not name the clients behind the dropped lines:\n%s", summary)
	}
	testutil.Eventually(t, "the summary in the access log", func() bool {
		return strings.Contains(access.String(), `"msg":"access log lines dropped"`)
	})
	lines := accessLines(t, []byte(access.String()))
	var gets, puts int
	for _, l := range lines {
		switch {
		case l["msg"] != "request":
		case l["method"] == "GET" && l["uri"] == "/v2/keys/conftool/k":
			gets++
		case l["method"] == "PUT" && strings.HasPrefix(l["uri"].(string), "/v2/keys/conftool/w"):
			puts++
		}
	}
	if gets > 10 {
		t.Errorf("%d GETs logged past a burst of 10", gets)
	}
	if puts != 3 {
		t.Errorf("%d of 3 writes that reached etcd logged, want all", puts)
	}
}

// TestAccessLogDropsLinesWhileItCannotRotate: a log that cannot be rotated
// (its directory went away) stops growing: lines are dropped and counted
// until rotation works again, and the gate keeps serving.
func TestAccessLogDropsLinesWhileItCannotRotate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "log")
	os.Mkdir(dir, 0o755)
	file := filepath.Join(dir, "access.log")
	h := newHarness(t, withConfig(func(c *gate.Config) {
		c.AccessLog = gate.AccessLogConfig{File: file, MaxBytes: 1024, Keep: 1}
	}))
	get := func() {
		if got := h.do(req{method: "GET", path: "/v2/keys/"}); got.status != 200 {
			t.Fatalf("GET: %d", got.status)
		}
	}
	os.RemoveAll(dir)
	dropped := h.metric("confsync_gate_access_log_dropped_total")
	testutil.Eventually(t, "a failed rotation", func() bool {
		get()
		return h.metric("confsync_gate_access_log_errors_total") >= 1
	})
	for range 10 {
		get()
	}
	if h.metric("confsync_gate_access_log_dropped_total")-dropped < 10 {
		t.Errorf("lines not dropped while the log cannot be rotated")
	}
	if !strings.Contains(h.logs.String(), "cannot rotate the access log") {
		t.Error("the failed rotation is not logged")
	}
	os.Mkdir(dir, 0o755)
	testutil.Eventually(t, "rotation to work again", func() bool {
		get()
		return strings.Contains(h.logs.String(), "access log rotated again")
	})
	get()
	h.stop()
	if data, err := os.ReadFile(file); err != nil || !strings.Contains(string(data), `"uri":"/v2/keys/"`) {
		t.Errorf("nothing logged after rotation worked again: %v %q", err, data)
	}
}
