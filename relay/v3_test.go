package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	"github.com/confsync/confsync/relay"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd 3.6 has no v2 API at all. A relay following its v3 API serves v2
// clients (Debian's etcdctl in v2 mode, python3-etcd) from the v3 keyspace:
// they read, list and watch as against etcd 3.4.
func TestV2ClientsReadAnEtcdThatHasNoV2(t *testing.T) {
	c := etcdtest.NewEtcd36(t, 1)
	kv, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() })
	put := func(k, v string) int64 {
		t.Helper()
		resp, err := kv.Put(context.Background(), k, v)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	put("/site/pool/a", "1")
	put("/site/pool/b", "2")
	put("/elsewhere", "x")
	r := startRelayOn(t, "127.0.0.1:0", c.Endpoints(), "/site", true, func(cfg *relay.RunConfig) { cfg.V3 = true })
	testutil.Eventually(t, "the relay's copy", func() bool { return get(r.URL+"/v2/keys/site/pool/a").status == 200 })

	// Answers as etcd's v2 API gives them: revisions as indexes,
	// directories derived from the keys' paths.
	a := get(r.URL + "/v2/keys/site/pool?recursive=true")
	var body struct {
		Node struct {
			Key   string
			Dir   bool
			Nodes []struct {
				Key, Value                  string
				ModifiedIndex, CreatedIndex uint64
			}
		}
	}
	if err := json.Unmarshal(a.body, &body); err != nil || !body.Node.Dir || len(body.Node.Nodes) != 2 ||
		body.Node.Nodes[0].Value != "1" || body.Node.Nodes[0].ModifiedIndex == 0 {
		t.Fatalf("recursive GET: %s %v", a.body, err)
	}
	if idx, _ := strconv.ParseUint(a.header.Get("X-Etcd-Index"), 10, 64); idx < body.Node.Nodes[1].ModifiedIndex {
		t.Errorf("X-Etcd-Index %d below the newest revision %d", idx, body.Node.Nodes[1].ModifiedIndex)
	}
	// Outside the prefix there is no v2 API to pass the request to.
	if out := get(r.URL + "/v2/keys/elsewhere"); out.status != 500 || !strings.Contains(string(out.body), `"errorCode":300`) {
		t.Errorf("a key outside the prefix: %d %s", out.status, out.body)
	}

	etcdctl := func(ctx context.Context, args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, "etcdctl", append([]string{"--endpoints", r.URL}, args...)...)
		cmd.Env = append(os.Environ(), "ETCDCTL_API=2")
		return cmd
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := etcdctl(ctx, "get", "/site/pool/a").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("etcdctl get: %q %v", out, err)
	}
	if out, err := etcdctl(ctx, "ls", "-r", "/site").CombinedOutput(); err != nil ||
		strings.TrimSpace(string(out)) != "/site/pool\n/site/pool/a\n/site/pool/b" {
		t.Errorf("etcdctl ls -r: %q %v", out, err)
	}
	watch := startLines(t, etcdctl(ctx, "watch", "/site/pool/a"))
	script := `
import etcd, json, sys
c = etcd.Client(host=sys.argv[1], port=int(sys.argv[2]), allow_reconnect=False)
r = c.read("/site/pool", recursive=True)
print(json.dumps(sorted([l.key, l.value] for l in r.leaves)), flush=True)
w = c.watch("/site/pool/b", index=r.etcd_index + 1, timeout=60)
print(json.dumps([w.action, w.key, w.value]), flush=True)
`
	host, port, _ := strings.Cut(strings.TrimPrefix(r.URL, "http://"), ":")
	python := startLines(t, exec.CommandContext(ctx, "/usr/bin/python3", "-c", script, host, port))
	if line := python.next(t); line != `[["/site/pool/a", "1"], ["/site/pool/b", "2"]]` {
		t.Fatalf("python read %s", line)
	}
	waitForWatchers(t, r, 2)
	put("/site/pool/a", "3")
	rev := put("/site/pool/b", "4")
	if line := watch.next(t); line != "3" {
		t.Errorf("etcdctl watch printed %q", line)
	}
	if line := python.next(t); line != `["set", "/site/pool/b", "4"]` {
		t.Errorf("python watch got %s", line)
	}
	// A watch from a revision already seen is answered from the history.
	past := get(fmt.Sprintf("%s/v2/keys/site/pool/b?wait=true&waitIndex=%d", r.URL, rev))
	if !strings.Contains(string(past.body), `"value":"4"`) {
		t.Errorf("wait from revision %d: %s", rev, past.body)
	}
}

// A v3 key may hold a value and have keys below it; v2 has no such node.
// The relay shows it as the directory of the keys below (its own value is
// not served), as docs/relay.md says.
func TestV3KeyWithKeysBelowIsADirectory(t *testing.T) {
	c := etcdtest.NewEtcd36(t, 1)
	kv, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() })
	kv.Put(context.Background(), "/site/both", "own value")
	kv.Put(context.Background(), "/site/both/child", "c")
	r := startRelayOn(t, "127.0.0.1:0", c.Endpoints(), "/site", true, func(cfg *relay.RunConfig) { cfg.V3 = true })
	testutil.Eventually(t, "the relay's copy", func() bool { return get(r.URL+"/v2/keys/site/both/child").status == 200 })
	a := get(r.URL + "/v2/keys/site/both")
	if a.status != 200 || !strings.Contains(string(a.body), `"dir":true`) || strings.Contains(string(a.body), "own value") ||
		!strings.Contains(string(a.body), `"key":"/site/both/child"`) {
		t.Fatalf("GET of a v3 key with keys below it: %d %s", a.status, a.body)
	}
	if a := get(r.URL + "/v2/keys/site"); !strings.Contains(string(a.body), `{"key":"/site/both","dir":true`) {
		t.Fatalf("listed under its parent: %s", a.body)
	}
}
