package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
)

// TestRelayUsageErrors: bad flags exit 2 with a message naming the flag.
func TestRelayUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"relay", "-prefix", "/p"}, "-listen is required"},
		{[]string{"relay", "-listen", "127.0.0.1:0"}, "-prefix"},
		{[]string{"relay", "-listen", "127.0.0.1:0", "-prefix", "p"}, "absolute key"},
		{[]string{"relay", "-listen", "127.0.0.1:0", "-prefix", "/p", "-history", "0"}, "-history"},
		{[]string{"relay", "-listen", "127.0.0.1:0", "-prefix", "/p", "-tls-cert", "c.pem"}, "-tls-key"},
		{[]string{"relay", "-listen", "127.0.0.1:0", "-prefix", "/p", "extra"}, "unexpected arguments"},
		{[]string{"relay", "-nope"}, "-nope"},
	} {
		res := runCmd(t, tc.args...)
		if res.code != 2 || !strings.Contains(res.stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, res.code, res.stderr, tc.want)
		}
	}
}

// TestRelayCommandServesAndStops: confsync relay serves the prefix from
// etcd and exits 0 on cancellation (SIGTERM).
func TestRelayCommandServesAndStops(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/p/k", "v")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan runResult, 1)
	go func() {
		var out, errOut strings.Builder
		code := run(ctx, []string{"relay", "-listen", addr, "-node", srv.URL(), "-prefix", "/p", "-log-level", "warn"}, &out, &errOut)
		done <- runResult{code, out.String(), errOut.String()}
	}()
	testutil.Eventually(t, "the relay serving /p/k", func() bool {
		resp, err := http.Get("http://" + addr + "/v2/keys/p/k")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK && strings.Contains(string(b), `"value":"v"`)
	})
	cancel()
	select {
	case res := <-done:
		if res.code != 0 {
			t.Errorf("exit %d: %s", res.code, res.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("confsync relay did not stop")
	}
}
