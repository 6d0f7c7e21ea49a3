package keyspace_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/keyspace"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	client "go.etcd.io/etcd/client/v2"
)

// follower applies what a Feed delivers to a Space.
type follower struct {
	mu    sync.Mutex
	space *keyspace.Space
}

func (f *follower) Reset(l *etcd.Listing, _ string) {
	f.mu.Lock()
	f.space = keyspace.FromWire(l.Prefix, l.Node, l.Index)
	f.mu.Unlock()
}

func (f *follower) Apply(ev *etcd.Event) {
	f.mu.Lock()
	f.space = f.space.Apply(ev)
	f.mu.Unlock()
}

func (f *follower) Progress(index uint64) {
	f.mu.Lock()
	f.space = f.space.WithIndex(index)
	f.mu.Unlock()
}

func (f *follower) current() *keyspace.Space {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.space
}

// etcdView is etcd's own recursive, sorted answer for prefix, without the
// TTL (which etcd counts down at its own moment), or nil when it has none.
func etcdView(t *testing.T, srv *etcdtest.Server, prefix string) *etcd.Node {
	t.Helper()
	resp, err := http.Get(srv.URL() + "/v2/keys" + prefix + "?recursive=true&sorted=true")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil
	}
	var body struct{ Node *etcd.Node }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	stripTTL(body.Node)
	return body.Node
}

func stripTTL(n *etcd.Node) {
	if n == nil {
		return
	}
	n.TTL = 0
	if n.Expiration != nil {
		exp := n.Expiration.UTC()
		n.Expiration = &exp
	}
	for _, c := range n.Nodes {
		stripTTL(c)
	}
}

// The copy a Space keeps of a prefix, fed by a real etcd's watch, is
// what etcd itself answers, indexes, empty directories and expirations
// included, after every kind of v2 write, in and around the prefix.
func TestSpaceMatchesEtcdUnderEveryWrite(t *testing.T) {
	srv := etcdtest.New(t)
	c, err := etcd.New(context.Background(), etcd.Config{Endpoints: []string{srv.URL()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	const prefix = "/ks"
	f := &follower{}
	feed := c.NewFeed(etcd.FeedConfig{Prefix: prefix, PollTimeout: 2 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); feed.Run(ctx, f) }()
	t.Cleanup(func() { cancel(); <-done })
	testutil.Eventually(t, "the first read", func() bool { return f.current() != nil })

	keys := srv.Client()
	rng := rand.New(rand.NewPCG(7, 11))
	paths := []string{"/ks/a", "/ks/b/c", "/ks/b/d", "/ks/e/f/g", "/ks/_hidden/x", "/ks/b/_h", "/ksx/y", "/k", "/ks"}
	hiddenParent := map[string]string{"/ks/_hidden/x": "/ks", "/ks/b/_h": "/ks/b"}
	for i := 0; i < 400; i++ {
		p := paths[rng.IntN(len(paths))]
		if parent, ok := hiddenParent[p]; ok {
			// A watch never sees a hidden key, so a directory that only a
			// hidden key's write created would be unknown to the copy (a
			// documented limit): create it visibly first.
			keys.Set(context.Background(), parent, "", &client.SetOptions{Dir: true, PrevExist: client.PrevNoExist})
		}
		randomWrite(keys, rng, p, i)
		if i%50 == 49 {
			compare(t, srv, f, prefix)
		}
	}
	// TTLs run out on their own: etcd's expire events must reach the copy.
	keys.Set(context.Background(), "/ks/ttl/short", "x", &client.SetOptions{TTL: time.Second})
	testutil.Eventually(t, "the expiry", func() bool {
		_, err := keys.Get(context.Background(), "/ks/ttl/short", nil)
		return etcd.IsKeyNotFound(err)
	})
	keys.Set(context.Background(), "/ks/after", "1", nil)
	compare(t, srv, f, prefix)
	// A delete of the prefix itself takes everything away.
	keys.Delete(context.Background(), "/ks", &client.DeleteOptions{Recursive: true, Dir: true})
	compare(t, srv, f, prefix)
}

// randomWrite does one v2 write of a random kind on p.
func randomWrite(keys client.KeysAPI, rng *rand.Rand, p string, i int) (*client.Response, error) {
	ctx := context.Background()
	v := fmt.Sprint(i)
	if rng.IntN(10) == 0 {
		v = "" // empty values are values
	}
	switch rng.IntN(9) {
	case 0:
		return keys.Set(ctx, p, v, nil)
	case 1:
		return keys.Set(ctx, p, v, &client.SetOptions{PrevExist: client.PrevNoExist})
	case 2:
		return keys.Set(ctx, p, v, &client.SetOptions{PrevExist: client.PrevExist})
	case 3:
		cur, err := keys.Get(ctx, p, nil)
		if err != nil || cur.Node.Dir {
			return nil, fmt.Errorf("skip")
		}
		return keys.Set(ctx, p, v, &client.SetOptions{PrevIndex: cur.Node.ModifiedIndex})
	case 4:
		cur, err := keys.Get(ctx, p, nil)
		if err != nil || cur.Node.Dir {
			return nil, fmt.Errorf("skip")
		}
		return keys.Delete(ctx, p, &client.DeleteOptions{PrevValue: cur.Node.Value})
	case 5:
		return keys.Delete(ctx, p, &client.DeleteOptions{Recursive: true})
	case 6:
		return keys.Set(ctx, p+"/sub", v, &client.SetOptions{Dir: true})
	case 7:
		return keys.Set(ctx, p, v, &client.SetOptions{TTL: time.Hour})
	default:
		return keys.Set(ctx, p, "", &client.SetOptions{Dir: true, TTL: 2 * time.Hour})
	}
}

// compare waits until the copy holds what etcd answers, and fails with
// both when it does not within the test's patience. (Writes outside the
// prefix or to hidden keys reach the copy only as index progress, so the
// copy's index is not the thing to wait for.)
func compare(t *testing.T, srv *etcdtest.Server, f *follower, prefix string) {
	t.Helper()
	var got, want *etcd.Node
	same := func() bool {
		want = etcdView(t, srv, prefix)
		got = f.current().ToWire(prefix, true, time.Now())
		stripTTL(got)
		return reflect.DeepEqual(got, want) && f.current().Len() == countLeaves(want)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !same() {
		if time.Now().After(deadline) {
			g, _ := json.MarshalIndent(got, "", " ")
			w, _ := json.MarshalIndent(want, "", " ")
			t.Fatalf("copy (%d values) differs from etcd:\ncopy: %s\netcd: %s", f.current().Len(), g, w)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func countLeaves(n *etcd.Node) int {
	if n == nil {
		return 0
	}
	if !n.Dir {
		return 1
	}
	total := 0
	for _, c := range n.Nodes {
		total += countLeaves(c)
	}
	return total
}

func TestRelevantFiltersWhatAWatchLeaks(t *testing.T) {
	s := keyspace.Empty("/conftool", 1)
	ev := func(action, key string) *etcd.Event {
		v := "x"
		return &etcd.Event{Action: action, Node: &etcd.Node{Key: key, Value: &v, ModifiedIndex: 2}}
	}
	for _, tc := range []struct {
		ev   *etcd.Event
		want bool
	}{
		{ev("set", "/conftool/a"), true},
		{ev("set", "/conftool"), true},
		{ev("delete", "/conf"), false},      // a sibling's delete, from history
		{ev("delete", "/conftoolx"), false}, // not under the prefix
		{ev("set", "/conftool/_lock/x"), false},
		{ev("delete", "/"), true},
		{ev("expire", "/"), true},
		{ev("set", "/"), false},
	} {
		if got := s.Relevant(tc.ev); got != tc.want {
			t.Errorf("%s %s: relevant %v, want %v", tc.ev.Action, tc.ev.Node.Key, got, tc.want)
		}
	}
}

func TestTTLRoundsUpLikeEtcd(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		left time.Duration
		want int64
	}{{5 * time.Second, 5}, {4500 * time.Millisecond, 5}, {time.Millisecond, 1}, {0, 0}, {-1500 * time.Millisecond, -1}} {
		if got := keyspace.TTL(now.Add(tc.left), now); got != tc.want {
			t.Errorf("%v left: ttl %d, want %d", tc.left, got, tc.want)
		}
	}
}

// Sources without etcd's metadata (files, the environment) still give a
// Space with every value, including keys that are values and directories
// at once, as the env backend makes them.
func TestFromLeavesKeepsEveryValue(t *testing.T) {
	tree := (&backends.Tree{}).Set("/p/a", "1").Set("/p/a/b", "2").Set("/p/c/d", "3").Set("/q", "out")
	s := keyspace.FromLeaves("/p", tree, 5)
	got := map[string]string{}
	s.WalkLeaves("/p", func(k, v string) bool { got[k] = v; return true })
	want := map[string]string{"/p/a": "1", "/p/a/b": "2", "/p/c/d": "3"}
	if !reflect.DeepEqual(got, want) || s.Len() != 3 || s.Index() != 5 {
		t.Fatalf("values %v (len %d), want %v", got, s.Len(), want)
	}
}

// AppendJSON writes what encoding/json writes for ToWire, byte for byte,
// whatever the keys and values hold.
func TestAppendJSONIsEncodingJSON(t *testing.T) {
	v := func(s string) *string { return &s }
	exp := time.Date(2030, 5, 6, 7, 8, 9, 123456789, time.FixedZone("x", 3600))
	top := &etcd.Node{Key: "/p", Dir: true, CreatedIndex: 2, ModifiedIndex: 3, Nodes: []*etcd.Node{
		{Key: "/p/plain", Value: v(`{"pooled": "yes", "weight": 10}`), CreatedIndex: 4, ModifiedIndex: 5},
		{Key: "/p/empty", Value: v(""), CreatedIndex: 6, ModifiedIndex: 6},
		{Key: "/p/odd <&> \u2028\u2029 \x01\t\n\"\\", Value: v("bad utf8 \xff\xfe é ✓ \x7f"), CreatedIndex: 7, ModifiedIndex: 7},
		{Key: "/p/ttl", Value: v("x"), Expiration: &exp, CreatedIndex: 8, ModifiedIndex: 8},
		{Key: "/p/dir", Dir: true, CreatedIndex: 9, ModifiedIndex: 9, Expiration: &exp, Nodes: []*etcd.Node{
			{Key: "/p/dir/deep", Value: v("1"), CreatedIndex: 10, ModifiedIndex: 10}}},
		{Key: "/p/emptydir", Dir: true, CreatedIndex: 11, ModifiedIndex: 11},
	}}
	s := keyspace.FromWire("/p", top, 20)
	now := time.Date(2030, 5, 6, 7, 0, 0, 0, time.UTC)
	for _, key := range []string{"/p", "/p/dir", "/p/plain", "/p/emptydir", "/p/missing"} {
		for _, recursive := range []bool{false, true} {
			want, _ := json.Marshal(s.ToWire(key, recursive, now))
			if got := s.AppendJSON(nil, key, recursive, now); string(got) != string(want) {
				t.Errorf("%s recursive=%v:\n got %s\nwant %s", key, recursive, got, want)
			}
		}
	}
	root := keyspace.FromWire("/", &etcd.Node{Dir: true, Nodes: []*etcd.Node{{Key: "/a", Value: v("1"), CreatedIndex: 1, ModifiedIndex: 1}}}, 1)
	want, _ := json.Marshal(root.ToWire("/", true, now))
	if got := root.AppendJSON(nil, "/", true, now); string(got) != string(want) {
		t.Errorf("root: got %s want %s", got, want)
	}
}

func FuzzAppendJSONIsEncodingJSON(f *testing.F) {
	for _, seed := range []string{"plain", "", "<script>&</script>", "\u2028", "\xff", "é✓", "\x00\x1f\"\\"} {
		f.Add(seed, seed)
	}
	f.Fuzz(func(t *testing.T, name, value string) {
		key := backends.CleanKey("/f/" + name)
		if !backends.Covers("/f", key) || key == "/f" {
			return
		}
		s := keyspace.FromWire("/f", &etcd.Node{Key: "/f", Dir: true, CreatedIndex: 1, ModifiedIndex: 1,
			Nodes: []*etcd.Node{{Key: key, Value: &value, CreatedIndex: 2, ModifiedIndex: 3}}}, 3)
		now := time.Now()
		want, _ := json.Marshal(s.ToWire("/f", true, now))
		if got := s.AppendJSON(nil, "/f", true, now); string(got) != string(want) {
			t.Fatalf("got %s\nwant %s", got, want)
		}
	})
}

// In a flat keyspace (etcd v3) a key may hold a value and have keys below
// it; deleting it leaves them, and directories are only their shape.
func TestFlatEvents(t *testing.T) {
	put := func(key, value string, rev uint64) *etcd.Event {
		return &etcd.Event{Action: "set", Flat: true, Node: &etcd.Node{Key: key, Value: &value, CreatedIndex: rev, ModifiedIndex: rev}}
	}
	del := func(key string, rev uint64) *etcd.Event {
		return &etcd.Event{Action: "delete", Flat: true, Node: &etcd.Node{Key: key, ModifiedIndex: rev}}
	}
	s := keyspace.Empty("/p", 1)
	for _, ev := range []*etcd.Event{put("/p/a/b", "1", 2), put("/p/a", "top", 3), put("/p/c/d/e", "2", 4),
		put("/p", "self", 5), del("/p/c/d/e", 6), put("/other", "x", 7), del("/", 8)} {
		s = s.Apply(ev)
	}
	values := func() map[string]string {
		got := map[string]string{}
		s.WalkLeaves("/p", func(k, v string) bool { got[k] = v; return true })
		return got
	}
	want := map[string]string{"/p": "self", "/p/a": "top", "/p/a/b": "1"}
	if got := values(); !reflect.DeepEqual(got, want) || s.Len() != 3 {
		t.Fatalf("values %v (len %d), want %v", got, s.Len(), want)
	}
	if s.Get("/p/c") != nil {
		t.Fatal("a directory with nothing below it stayed")
	}
	s = s.Apply(del("/p/a", 9))
	if n := s.Get("/p/a"); n == nil || !n.IsDir() || s.Len() != 2 {
		t.Fatalf("deleting a key with keys below it: %+v, len %d", n, s.Len())
	}
	s = s.Apply(del("/p/a/b", 10)).Apply(del("/p", 11))
	if s.Get("/p") != nil || s.Len() != 0 {
		t.Fatalf("everything deleted, yet %v remains", values())
	}
}
