package etcdtest_test

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/confsync/confsync/internal/etcdtest"
)

// v3JSON posts body to etcd's v3 JSON gateway and decodes the answer.
func v3JSON(t *testing.T, url, path, body string, out any) {
	t.Helper()
	resp, err := http.Post(url+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s %s", path, resp.Status, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("POST %s: %v in %s", path, err, b)
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestEtcd36AnswersV3AndNotV2(t *testing.T) {
	c := etcdtest.NewEtcd36(t, 3)
	leader := c.Leader(t)
	if c.ClusterID(t) == "" {
		t.Fatal("no cluster ID")
	}

	var version struct{ Etcdserver string }
	resp, err := http.Get(c.URL(0) + "/version")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&version)
	resp.Body.Close()
	if !strings.HasPrefix(version.Etcdserver, "3.6.") {
		t.Fatalf("server version %q, want 3.6.x", version.Etcdserver)
	}

	var put struct{}
	v3JSON(t, c.URL(leader), "/v3/kv/put", `{"key":"`+b64("/conftool/v1/k")+`","value":"`+b64("v")+`"}`, &put)
	follower := (leader + 1) % 3
	var rng struct {
		Kvs []struct{ Value string }
	}
	v3JSON(t, c.URL(follower), "/v3/kv/range", `{"key":"`+b64("/conftool/v1/k")+`"}`, &rng)
	if len(rng.Kvs) != 1 || rng.Kvs[0].Value != b64("v") {
		t.Fatalf("v3 range on a follower: %+v", rng)
	}

	resp, err = http.Get(c.URL(0) + "/v2/keys/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /v2/keys/ on etcd 3.6: %s, want 404 Not Found", resp.Status)
	}

	c.Kill(leader)
	if next := c.Leader(t); next == leader {
		t.Fatalf("killed member %d still leads", leader)
	}
}
