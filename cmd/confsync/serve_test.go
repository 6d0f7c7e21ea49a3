package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testpki"
	"github.com/confsync/confsync/internal/testutil"
)

// agent -serve answers etcd's v2 reads and waits over TLS from the agent's
// own watch, and, restarted while etcd is down, from its cache: a host's
// pybal and scripts keep their configuration across their own restarts
// during an outage.
func TestAgentServesTheV2API(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	dir, _ := writeConfdir(t, map[string]string{
		"conf.d/r.toml":    "[template]\nsrc = \"t.tmpl\"\ndest = \"{{out}}/r\"\nkeys = [\"/pool\"]\n",
		"templates/t.tmpl": `{{getv "/pool/a"}}`,
	})
	pki := testpki.New(t)
	state, serve := t.TempDir(), freeAddr(t)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(false)}, Timeout: time.Minute}
	get := func(path string) (string, http.Header, error) {
		resp, err := client.Get("https://" + serve + path)
		if err != nil {
			return "", nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), resp.Header, nil
	}
	start := func() *runningAgent {
		return startAgentProcess(t, "-confdir", dir, "-node", srv.URL(), "-state-dir", state,
			"-serve", serve, "-serve-tls-cert", pki.ServerCert, "-serve-tls-key", pki.ServerKey)
	}
	a := start()
	testutil.Eventually(t, "the agent's copy served", func() bool {
		body, _, err := get("/v2/keys/pool/a")
		return err == nil && strings.Contains(body, `"value":"1"`)
	})
	_, h, _ := get("/v2/keys/pool?recursive=true")
	next, _ := strconv.ParseUint(h.Get("X-Etcd-Index"), 10, 64)
	waited := make(chan string, 1)
	go func() {
		body, _, _ := get("/v2/keys/pool?wait=true&recursive=true&waitIndex=" + strconv.FormatUint(next+1, 10))
		waited <- body
	}()
	srv.Set(t, "/pool/a", "2")
	var ev struct {
		Action string
		Node   struct{ Key, Value string }
	}
	select {
	case body := <-waited:
		json.Unmarshal([]byte(body), &ev)
	case <-time.After(time.Minute):
		t.Fatal("no event through the agent")
	}
	if ev.Action != "set" || ev.Node.Key != "/pool/a" || ev.Node.Value != "2" {
		t.Fatalf("event %+v", ev)
	}
	testutil.Eventually(t, "the cache saved", func() bool {
		raw, _ := os.ReadFile(filepath.Join(state, "cache.json"))
		var c struct {
			Index uint64 `json:"etcd_index"`
		}
		return json.Unmarshal(raw, &c) == nil && c.Index > next
	})

	// etcd goes away, and the agent restarts: its copy comes from the cache.
	srv.Stop()
	a.cmd.Process.Signal(syscall.SIGTERM)
	a.cmd.Wait()
	start()
	testutil.Eventually(t, "the cached copy served", func() bool {
		body, h, err := get("/v2/keys/pool/a")
		return err == nil && strings.Contains(body, `"value":"2"`) && h.Get("X-Confsync-Data-Age") != "0"
	})
}
