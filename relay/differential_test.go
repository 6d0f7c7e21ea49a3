package relay_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	"github.com/confsync/confsync/relay"
)

// TestDifferentialAgainstEtcd drives the same requests at Debian's etcd
// 3.4 and at relays in front of it (one of /rt, one of the whole
// keyspace), after each kind of v2 write, and compares the answers field
// by field: every GET form, every error, waits registered before the
// write, waits from the past and waits too old for either history. The
// differences docs/relay.md lists are the only ones allowed: children
// come sorted (etcd's order is random unless sorted=true, so the test
// sorts etcd's), TTLs are counted at each answer (±1s), X-Raft-* headers
// are absent, and the oldest index in a 401's cause is the relay's.
func TestDifferentialAgainstEtcd(t *testing.T) {
	cluster := etcdtest.NewProcessCluster(t, 1)
	e := cluster.URL(0)
	set(t, e, "/rt/pre/a", "before the relay")
	set(t, e, "/outside/x", "not relayed")
	set(t, e, "/rt/_hidden/h", "hidden")
	write(t, e, http.MethodPut, "/rt/pre/empty", url.Values{"dir": {"true"}})

	prefixed := startRelay(t, []string{e}, "/rt")
	whole := startRelay(t, []string{e}, "/")
	d := &differ{t: t, etcd: e, relays: map[string]string{"/rt": prefixed.URL, "/": whole.URL}}
	d.sync()
	d.battery("start")

	var b map[string]string // CAS needs the index of /rt/b
	actions := []action{
		{name: "set a new key", method: "PUT", key: "/rt/a", form: url.Values{"value": {"1"}}},
		{name: "set an existing key", method: "PUT", key: "/rt/a", form: url.Values{"value": {"2"}},
			watches: []watchForm{{key: "/rt", fires: false}, {key: "/rt", recursive: true, stream: true, fires: false}}},
		{name: "set the same value", method: "PUT", key: "/rt/a", form: url.Values{"value": {"2"}}},
		{name: "create", method: "PUT", key: "/rt/b", form: url.Values{"value": {"x"}, "prevExist": {"false"}}},
		{name: "create in order", method: "POST", key: "/rt/queue", form: url.Values{"value": {"q1"}}},
		{name: "update", method: "PUT", key: "/rt/b", form: url.Values{"value": {"y"}, "prevExist": {"true"}}},
		{name: "compare and swap on value", method: "PUT", key: "/rt/b", form: url.Values{"value": {"z"}, "prevValue": {"y"}}},
		{name: "compare and swap on index", method: "PUT", key: "/rt/b", prepare: func() url.Values {
			b = map[string]string{"index": strconv.FormatUint(decodeNode(t, get(e+"/v2/keys/rt/b")).ModifiedIndex, 10)}
			return url.Values{"value": {"w"}, "prevIndex": {b["index"]}}
		}},
		{name: "mkdir", method: "PUT", key: "/rt/d", form: url.Values{"dir": {"true"}}},
		{name: "set in a directory", method: "PUT", key: "/rt/d/x", form: url.Values{"value": {"dx"}}},
		{name: "set creating directories", method: "PUT", key: "/rt/d/sub/y", form: url.Values{"value": {"dy"}}},
		{name: "empty value", method: "PUT", key: "/rt/empty", form: url.Values{"value": {""}}},
		{name: "compare and delete", method: "DELETE", key: "/rt/a", form: url.Values{"prevValue": {"2"}}},
		{name: "delete", method: "DELETE", key: "/rt/b"},
		{name: "directory TTL", method: "PUT", key: "/rt/d", form: url.Values{"dir": {"true"}, "ttl": {"100"}, "prevExist": {"true"}}},
		{name: "value with a TTL", method: "PUT", key: "/rt/t", form: url.Values{"value": {"ttl"}, "ttl": {"100"}}},
		{name: "delete a directory recursively", method: "DELETE", key: "/rt/d", form: url.Values{"recursive": {"true"}},
			watches: []watchForm{{key: "/rt/d/x", fires: true}, {key: "/rt/d/sub", fires: true}, {key: "/rt/d/sub/y", recursive: true, fires: true},
				{key: "/rt/d/never", fires: false}}},
		{name: "mkdir to remove", method: "PUT", key: "/rt/e", form: url.Values{"dir": {"true"}}},
		{name: "rmdir", method: "DELETE", key: "/rt/e", form: url.Values{"dir": {"true"}}},
		{name: "hidden key", method: "PUT", key: "/rt/_h2", form: url.Values{"value": {"h"}}, hidden: true},
		{name: "outside the prefix", method: "PUT", key: "/outside/y", form: url.Values{"value": {"o"}}, outside: true},
		{name: "TTL expiry", method: "PUT", key: "/rt/x", form: url.Values{"value": {"short"}, "ttl": {"1"}}, expires: true},
		{name: "delete the prefix", method: "DELETE", key: "/rt", form: url.Values{"recursive": {"true"}},
			watches: []watchForm{{key: "/rt/t", fires: true}, {key: "/rt/queue", recursive: true, fires: true}}},
		{name: "recreate the prefix", method: "PUT", key: "/rt/again", form: url.Values{"value": {"back"}}},
	}
	var events []*etcd.Event
	for _, a := range actions {
		events = append(events, d.play(a)...)
		d.battery("after " + a.name)
	}
	d.pastWaits(events)
	d.tooOld(events[0].Index())
}

// differ compares etcd's answers with the relays'.
type differ struct {
	t      *testing.T
	etcd   string
	relays map[string]string // prefix -> URL
}

// action is one write and the waits registered before it.
type action struct {
	name, method, key string
	form              url.Values
	prepare           func() url.Values
	watches           []watchForm
	// hidden and outside writes are not relayed: nothing fires.
	hidden, outside bool
	// expires: the key expires after its write; waits see the expiry.
	expires bool
}

type watchForm struct {
	key               string
	recursive, stream bool
	fires             bool
}

func (f watchForm) query() string {
	q := "?wait=true"
	if f.recursive {
		q += "&recursive=true"
	}
	if f.stream {
		q += "&stream=true"
	}
	return q
}

// sync waits until every relay is at etcd's index.
func (d *differ) sync() {
	d.t.Helper()
	for p, r := range d.relays {
		waitSynced(d.t, d.etcd, r, p)
	}
}

// play registers waits on etcd and on every relay, writes, and compares
// what the waits answered. It returns the write's events.
func (d *differ) play(a action) []*etcd.Event {
	t := d.t
	t.Helper()
	forms := a.watches
	relayed := !a.hidden && !a.outside
	if a.key == "/rt" || a.method == "POST" {
		forms = append(forms, watchForm{key: a.key, recursive: true, fires: true})
	} else {
		forms = append(forms, watchForm{key: a.key, fires: true}) // exact watches fire even for hidden keys
	}
	forms = append(forms, watchForm{key: "/rt", recursive: true, fires: relayed},
		watchForm{key: path.Dir(a.key), recursive: true, fires: !a.hidden})
	type started struct {
		form    watchForm
		servers []string
		waits   []*pending
	}
	var all []started
	for _, f := range forms {
		wait := 10 * time.Second
		if !f.fires || f.stream {
			wait = 1500 * time.Millisecond
		}
		s := started{form: f}
		for _, base := range d.servers() {
			s.servers = append(s.servers, base)
			s.waits = append(s.waits, startWatch(t, base+"/v2/keys"+f.key+f.query(), wait))
		}
		all = append(all, s)
	}
	form := a.form
	if a.prepare != nil {
		form = a.prepare()
	}
	ev := write(t, d.etcd, a.method, a.key, form)
	events := []*etcd.Event{ev}
	if a.expires {
		testutil.Eventually(t, a.key+" to expire", func() bool {
			return get(d.etcd+"/v2/keys"+a.key).status == http.StatusNotFound
		})
		events = append(events, &etcd.Event{Action: "expire", Node: &etcd.Node{Key: a.key, ModifiedIndex: etcdIndex(t, d.etcd, "/")}})
	}
	d.sync()
	for _, s := range all {
		want := s.waits[0].result()
		if s.form.fires && (want.timedOut || want.status != http.StatusOK || len(want.body) == 0) {
			t.Errorf("%s: etcd's wait on %s%s did not fire: %v (err %v)", a.name, s.form.key, s.form.query(), want, want.err)
		}
		if !s.form.fires && !s.form.stream && !want.timedOut {
			t.Errorf("%s: etcd's wait on %s%s fired: %v", a.name, s.form.key, s.form.query(), want)
		}
		for i, w := range s.waits[1:] {
			got := w.result()
			if !d.covers(s.servers[i+1], s.form.key) {
				continue // passed through to etcd: not the relay's answer
			}
			d.compare(fmt.Sprintf("%s: wait %s%s at the relay of %s", a.name, s.form.key, s.form.query(), d.prefixOf(s.servers[i+1])), want, got, false)
		}
	}
	return events
}

// servers are etcd first, then every relay.
func (d *differ) servers() []string {
	out := []string{d.etcd}
	for _, p := range d.prefixes() {
		out = append(out, d.relays[p])
	}
	return out
}

func (d *differ) prefixes() []string {
	var ps []string
	for p := range d.relays {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}

func (d *differ) prefixOf(base string) string {
	for p, u := range d.relays {
		if u == base {
			return p
		}
	}
	return ""
}

// covers reports whether the relay at base answers key from memory.
func (d *differ) covers(base, key string) bool {
	p := d.prefixOf(base)
	if p != "/" && key != p && !strings.HasPrefix(key, p+"/") {
		return false
	}
	for _, seg := range strings.Split(strings.TrimPrefix(key, p), "/") {
		if strings.HasPrefix(seg, "_") {
			return false
		}
	}
	return true
}

// battery compares every read form on every node, and every error.
func (d *differ) battery(when string) {
	t := d.t
	t.Helper()
	d.sync()
	var keys []string
	if a := get(d.etcd + "/v2/keys/rt?recursive=true"); a.status == http.StatusOK {
		keys = nodeKeys(decodeNode(t, a), nil)
	}
	var reqs []string
	for _, k := range keys {
		for _, q := range []string{"", "?recursive=true", "?sorted=true", "?recursive=true&sorted=true", "?dir=true",
			"?stream=true", "?wait=false&waitIndex=1", "?recursive=1&sorted=T"} {
			reqs = append(reqs, "GET /v2/keys"+k+q)
		}
		reqs = append(reqs, "GET /v2/keys"+k+"/", "HEAD /v2/keys"+k, "HEAD /v2/keys"+k+"?recursive=true")
	}
	reqs = append(reqs,
		"GET /v2/keys", "GET /v2/keys/", "GET /v2/keys?recursive=true&sorted=true", "GET /v2/keys/?recursive=true",
		"GET /v2/keys/rt/missing", "GET /v2/keys/rt/missing/deeper", "GET /v2/keys/rt/pre/a/below", "HEAD /v2/keys/rt/missing",
		"GET /v2/keys/rt?waitIndex=x", "GET /v2/keys/rt?prevIndex=-1", "GET /v2/keys/rt?recursive=maybe",
		"GET /v2/keys/rt?sorted=2", "GET /v2/keys/rt?wait=yes", "GET /v2/keys/rt?dir=x", "GET /v2/keys/rt?quorum=x",
		"GET /v2/keys/rt?stream=x", "GET /v2/keys/rt?noValueOnSuccess=x", "GET /v2/keys/rt?prevValue=",
		"GET /v2/keys/rt?ttl=x", "GET /v2/keys/rt?ttl=", "GET /v2/keys/rt?prevExist=x", "GET /v2/keys/rt?refresh=x",
		"GET /v2/keys/rt?refresh=true&value=v&ttl=1", "GET /v2/keys/rt?refresh=true", "HEAD /v2/keys/rt?wait=true",
		"GET /v2/keys/rt?waitIndex=1&waitIndex=x", "GET /v2/keys/rt?recursive=true&recursive=bad",
		"GET /v2/keys/rt?a=%zz", "GET /v2/keys/rt//pre", "GET /v2/keys/rt/pre/../pre", "PATCH /v2/keys/rt",
		"GET /v2/keys/rt/_hidden/h", "GET /v2/keys/rt/_hidden?recursive=true", "GET /v2/keys/outside/x",
		"GET /v2/keys/outside?recursive=true", "GET /v2/keys/rt?quorum=true&recursive=true", "OPTIONS /v2/keys/rt",
		"GET /v2/keys/rt?wait=true&waitIndex=1&quorum=true",
	)
	for _, req := range reqs {
		method, target, _ := strings.Cut(req, " ")
		want := do(noRedirects, method, d.etcd+target, nil, 10*time.Second)
		sorted := strings.Contains(target, "sorted=true") || strings.Contains(target, "sorted=T")
		for _, p := range d.prefixes() {
			got := do(noRedirects, method, d.relays[p]+target, nil, 10*time.Second)
			d.compare(fmt.Sprintf("%s: %s at the relay of %s", when, req, p), want, got, sorted)
		}
	}
}

var noRedirects = &http.Client{
	Transport:     plainClient.Transport,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

func nodeKeys(n *etcd.Node, out []string) []string {
	out = append(out, n.Key)
	for _, c := range n.Nodes {
		out = nodeKeys(c, out)
	}
	return out
}

// compare checks got (the relay's) against want (etcd's).
func (d *differ) compare(what string, want, got answer, sorted bool) {
	t := d.t
	t.Helper()
	if want.timedOut != got.timedOut || (want.err == nil) != (got.err == nil) {
		t.Errorf("%s:\n etcd:  %v\n relay: %v", what, want, got)
		return
	}
	if want.err != nil && !want.timedOut {
		return
	}
	if want.status != got.status {
		t.Errorf("%s: status %d, etcd's %d\n etcd:  %s\n relay: %s", what, got.status, want.status, want.body, got.body)
		return
	}
	for _, h := range []string{"Content-Type", "X-Etcd-Index", "X-Etcd-Cluster-Id", "Location", "Allow",
		"Access-Control-Allow-Origin", "Access-Control-Allow-Methods", "Access-Control-Allow-Headers"} {
		if want.header.Get(h) != got.header.Get(h) {
			t.Errorf("%s: header %s %q, etcd's %q", what, h, got.header.Get(h), want.header.Get(h))
		}
	}
	if got.header.Get(relay.DataAgeHeader) != "0" {
		t.Errorf("%s: %s %q, want 0 while etcd answers", what, relay.DataAgeHeader, got.header.Get(relay.DataAgeHeader))
	}
	if !strings.HasPrefix(want.header.Get("Content-Type"), "application/json") {
		if !bytes.Equal(want.body, got.body) {
			t.Errorf("%s: body\n etcd:  %q\n relay: %q", what, want.body, got.body)
		}
		return
	}
	wantJSON, wantTTL := normalize(t, want.body, sorted)
	gotJSON, gotTTL := normalize(t, got.body, sorted)
	if wantJSON != gotJSON {
		t.Errorf("%s: body\n etcd:  %s\n relay: %s", what, wantJSON, gotJSON)
	}
	for k, w := range wantTTL {
		if g, ok := gotTTL[k]; !ok || g < w-1 || g > w+1 {
			t.Errorf("%s: ttl of %s %d, etcd's %d", what, k, g, w)
		}
	}
	if len(gotTTL) != len(wantTTL) {
		t.Errorf("%s: ttls %v, etcd's %v", what, gotTTL, wantTTL)
	}
}

// normalize re-encodes a body of JSON values (a stream has several) with
// children sorted by key unless the answer is sorted already (then their
// order must match), and every ttl taken out into a map by node.
func normalize(t *testing.T, body []byte, sorted bool) (string, map[string]int64) {
	t.Helper()
	ttls := map[string]int64{}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var out []string
	for i := 0; dec.More(); i++ {
		var v any
		if err := dec.Decode(&v); err != nil {
			return fmt.Sprintf("undecodable %q", body), nil
		}
		walkJSON(v, strconv.Itoa(i), sorted, ttls)
		b, _ := json.Marshal(v)
		out = append(out, string(b))
	}
	return strings.Join(out, "\n"), ttls
}

func walkJSON(v any, where string, sorted bool, ttls map[string]int64) {
	switch x := v.(type) {
	case map[string]any:
		if ttl, ok := x["ttl"].(json.Number); ok {
			n, _ := ttl.Int64()
			ttls[where+":"+fmt.Sprint(x["key"])] = n
			delete(x, "ttl")
		}
		for k, c := range x {
			walkJSON(c, where+"/"+k, sorted, ttls)
		}
		if nodes, ok := x["nodes"].([]any); ok && !sorted {
			sort.Slice(nodes, func(i, j int) bool {
				return fmt.Sprint(nodes[i].(map[string]any)["key"]) < fmt.Sprint(nodes[j].(map[string]any)["key"])
			})
		}
	case []any:
		for _, c := range x {
			walkJSON(c, where, sorted, ttls)
		}
	}
}

// pastWaits asks every form of wait from each event's index on: history
// answers them at once, on etcd and on the relays.
func (d *differ) pastWaits(events []*etcd.Event) {
	d.t.Helper()
	d.sync()
	for _, ev := range events {
		key := ev.Key()
		if strings.Contains(key, "/_") {
			// etcd's history answers recursive waits with hidden events
			// (live watches never get them); the relay never sees them.
			continue
		}
		idx := strconv.FormatUint(ev.Index(), 10)
		forms := []string{
			key + "?wait=true&waitIndex=" + idx,
			path.Dir(key) + "?wait=true&recursive=true&waitIndex=" + idx,
			"/rt?wait=true&recursive=true&waitIndex=" + idx,
			"?wait=true&recursive=true&waitIndex=" + idx,
		}
		if ev.Action == "delete" && ev.PrevNode != nil && ev.PrevNode.Dir {
			forms = append(forms, key+"/below/deeper?wait=true&waitIndex="+idx)
		}
		for _, f := range forms {
			target := "/v2/keys" + f
			var wg sync.WaitGroup
			answers := make([]answer, len(d.servers()))
			for i, base := range d.servers() {
				wg.Add(1)
				go func() {
					defer wg.Done()
					answers[i] = do(plainClient, http.MethodGet, base+target, nil, 1500*time.Millisecond)
				}()
			}
			wg.Wait()
			for i, p := range d.prefixes() {
				k, _, _ := strings.Cut(f, "?")
				if d.covers(d.relays[p], path.Join("/", k)) {
					d.compare(fmt.Sprintf("past wait %s (event %s %s) at the relay of %s", target, ev.Action, key, p), answers[0], answers[i+1], false)
				}
			}
		}
	}
}

var clearedCause = regexp.MustCompile(`^the requested history has been cleared \[(\d+)/(\d+)\]$`)

// tooOld pushes more than 1000 events through etcd and the relays, then
// waits from index: both histories have lost it and answer 401.
func (d *differ) tooOld(index uint64) {
	t := d.t
	t.Helper()
	for i := 0; i < 1010; i++ {
		set(t, d.etcd, "/rt/bulk", strconv.Itoa(i))
	}
	d.sync()
	target := "/v2/keys/rt?wait=true&recursive=true&waitIndex=" + strconv.FormatUint(index, 10)
	want := get(d.etcd + target)
	for _, p := range d.prefixes() {
		got := get(d.relays[p] + target)
		var we, ge map[string]any
		if json.Unmarshal(want.body, &we) != nil || json.Unmarshal(got.body, &ge) != nil {
			t.Fatalf("401 bodies: etcd %s, relay %s", want.body, got.body)
		}
		if want.status != http.StatusBadRequest || got.status != want.status {
			t.Errorf("too old at the relay of %s: status %d, etcd's %d", p, got.status, want.status)
		}
		for _, f := range []string{"errorCode", "message", "index"} {
			if fmt.Sprint(we[f]) != fmt.Sprint(ge[f]) {
				t.Errorf("too old at the relay of %s: %s %v, etcd's %v", p, f, ge[f], we[f])
			}
		}
		wm := clearedCause.FindStringSubmatch(fmt.Sprint(we["cause"]))
		gm := clearedCause.FindStringSubmatch(fmt.Sprint(ge["cause"]))
		if wm == nil || gm == nil || wm[2] != gm[2] {
			t.Errorf("too old at the relay of %s: cause %q, etcd's %q", p, ge["cause"], we["cause"])
		}
		if want.header.Get("X-Etcd-Index") != got.header.Get("X-Etcd-Index") {
			t.Errorf("too old at the relay of %s: X-Etcd-Index %s, etcd's %s", p, got.header.Get("X-Etcd-Index"), want.header.Get("X-Etcd-Index"))
		}
	}
}
