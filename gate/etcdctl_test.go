package gate_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/gate"
	"github.com/confsync/confsync/internal/testutil"
)

// TestEtcdctlThroughTheGate runs Debian's etcdctl (v2 API) against the gate
// over TLS with a user, exactly as an operator would, without --no-sync: it
// first reads /v2/members and then uses the client URLs listed there, which
// must be the gate's.
func TestEtcdctlThroughTheGate(t *testing.T) {
	bin, err := exec.LookPath("etcdctl")
	if err != nil {
		t.Skip("etcdctl not on PATH (Debian package etcd-client); CI installs it")
	}
	access := &testutil.SyncBuffer{}
	h := newHarness(t, withConfig(func(c *gate.Config) {
		c.AccessLog = gate.AccessLogConfig{Writer: access}
	}))
	etcdctl := func(args ...string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append([]string{"--endpoints", h.base, "--ca-file", h.pki.CAFile}, args...)...)
		cmd.Env = append(os.Environ(), "ETCDCTL_API=2")
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}

	if out, err := etcdctl("--username", "conftool:conftool-pw", "set", "/conftool/v1/x", "y"); err != nil {
		t.Fatalf("etcdctl set as conftool: %v\n%s", err, out)
	}
	if v, _ := h.etcdValue("/conftool/v1/x"); !strings.Contains(v, `"value":"y"`) {
		t.Errorf("etcd has %s", v)
	}
	// The access log is written out within a second.
	testutil.Eventually(t, "the write in the access log (or did etcdctl bypass the gate?)", func() bool {
		return strings.Contains(access.String(), `"method":"PUT","uri":"/v2/keys/conftool/v1/x`)
	})
	testutil.Eventually(t, "etcdctl's member list sync in the access log", func() bool {
		return strings.Contains(access.String(), `"uri":"/v2/members"`)
	})
	if out, err := etcdctl("get", "/conftool/v1/x"); err != nil || out != "y" {
		t.Errorf("etcdctl get: %q %v", out, err)
	}

	out, err := etcdctl("--username", "conftool:wrong", "set", "/conftool/v1/x", "z")
	if err == nil || !strings.Contains(out, "Insufficient credentials") {
		t.Errorf("etcdctl set with a wrong password: %v\n%s", err, out)
	}
	out, err = etcdctl("--username", "conftool:conftool-pw", "set", "/spicerack/x", "z")
	if err == nil || !strings.Contains(out, "Insufficient credentials") {
		t.Errorf("etcdctl set outside conftool's ACL: %v\n%s", err, out)
	}
	if _, exists := h.etcdValue("/spicerack/x"); exists {
		t.Error("a refused etcdctl write reached etcd")
	}
	if out, err := etcdctl("--username", "root:root-pw", "set", "/spicerack/x", "z"); err != nil {
		t.Errorf("etcdctl set as root: %v\n%s", err, out)
	}

	// etcdctl watch streams through the gate.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--endpoints", h.base, "--ca-file", h.pki.CAFile, "watch", "/conftool/v1/x")
	cmd.Env = append(os.Environ(), "ETCDCTL_API=2")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cancel()
	testutil.Eventually(t, "etcdctl watch to be open", func() bool { return h.metric("confsync_gate_open_watches") == 1 })
	h.etcd.Set(t, "/conftool/v1/x", "watched")
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if strings.TrimSpace(line) != "watched" {
		t.Errorf("etcdctl watch printed %q (%v)", line, err)
	}
}
