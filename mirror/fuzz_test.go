package mirror

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	client "go.etcd.io/etcd/client/v2"
)

// Fuzz targets for what the mirror reads from places it does not control:
// the destination's index key, .source document and lock (anyone with
// write access can put anything there), and the source's v2 events.
// Seeds live in testdata/fuzz/<target>/. Run one with:
//
//	go test -run '^$' -fuzz '^FuzzParseIndex$' -fuzztime 10s ./mirror

// FuzzParseIndex: any value either parses to the index it spells, in a
// form that writing it back reproduces, or is refused with the key named.
func FuzzParseIndex(f *testing.F) {
	f.Add("12345")
	f.Fuzz(func(t *testing.T, value string) {
		idx, err := parseIndex("/__replication/x", value)
		if err != nil {
			if !strings.Contains(err.Error(), "/__replication/x") {
				t.Fatalf("error does not name the key: %v", err)
			}
			return
		}
		if strings.TrimSpace(value) != strconv.FormatUint(idx, 10) {
			t.Fatalf("%q parsed as %d, which is written %q", value, idx, strconv.FormatUint(idx, 10))
		}
		back, err := parseIndex("/__replication/x", strconv.FormatUint(idx, 10))
		if err != nil || back != idx {
			t.Fatalf("round trip of %d: %d %v", idx, back, err)
		}
	})
}

// FuzzParseState: a .source document either parses, and then survives a
// write and a read unchanged, or is refused with the key named.
func FuzzParseState(f *testing.F) {
	f.Add(`{"source_cluster_id":"cdf818194e3a8c32","source_prefix":"/","destination_prefix":"/","strip":true,"may_have_applied_through":7,"writer":"w","updated_at":"2026-01-02T03:04:05Z"}`)
	f.Fuzz(func(t *testing.T, value string) {
		st, err := parseState("/__replication/x.source", value)
		if err != nil {
			if !strings.Contains(err.Error(), "/__replication/x.source") {
				t.Fatalf("error does not name the key: %v", err)
			}
			return
		}
		if api := st.sourceAPI(); api != apiV2 && api != apiV3 {
			t.Fatalf("accepted source API %q", api)
		}
		body, err := json.Marshal(st)
		if err != nil {
			return // a time outside JSON's range: the mirror would fail its write, not crash
		}
		again, err := parseState("/__replication/x.source", string(body))
		if err != nil {
			t.Fatalf("our own document %s does not parse: %v", body, err)
		}
		body2, _ := json.Marshal(again)
		if string(body) != string(body2) {
			t.Fatalf("round trip changed the document:\n%s\n%s", body, body2)
		}
	})
}

// FuzzParseLockOwner: a lock value either names an owner, and then
// survives a round trip, or is described as it is; neither panics, and
// the description stays short whatever the value's size.
func FuzzParseLockOwner(f *testing.F) {
	f.Add(newLockOwner("1.0").encode())
	f.Fuzz(func(t *testing.T, value string) {
		desc := describeHolder(value)
		if len(desc) > 400 {
			t.Fatalf("description of a %d-byte value is %d bytes", len(value), len(desc))
		}
		o, err := parseLockOwner(value)
		if err != nil {
			return
		}
		again, err := parseLockOwner(o.encode())
		if err != nil || again.encode() != o.encode() {
			t.Fatalf("round trip of %+v: %+v %v", o, again, err)
		}
	})
}

var fuzzMirrors sync.Map // mapping → *Mirror

// fuzzMirror is a mirror that is never run: classify needs its mapping,
// filters and counters, not its clusters.
func fuzzMirror(t *testing.T, mapping byte) *Mirror {
	if m, ok := fuzzMirrors.Load(mapping); ok {
		return m.(*Mirror)
	}
	shapes := []struct {
		src, dst string
		strip    bool
	}{{"/", "/", false}, {"/conftool", "/replica", false}, {"/conftool", "/conftool", true}, {"/a/b", "/", true}}
	s := shapes[int(mapping)%len(shapes)]
	m, err := New(Config{
		Source:       etcd.Config{Endpoints: []string{"http://127.0.0.1:1"}},
		Destination:  etcd.Config{Endpoints: []string{"http://127.0.0.1:1"}},
		SourcePrefix: s.src, DestinationPrefix: s.dst, Strip: s.strip,
		IgnoreKeys: `/conftool/locks(/.*)?`,
	})
	if err != nil {
		t.Fatal(err)
	}
	actual, _ := fuzzMirrors.LoadOrStore(mapping, m)
	return actual.(*Mirror)
}

// FuzzV2EventMapping feeds arbitrary v2 events (as etcd's JSON) through
// classification and both write mappings. Whatever the event: no panic;
// an event the mirror writes lands at or below the destination base and
// maps back onto its source key; a v3 write is a put or a delete, never
// both; and the v2 applier always recognises the event's own result as
// already applied, which is what makes replays after a crash harmless.
func FuzzV2EventMapping(f *testing.F) {
	f.Add(byte(1), `{"action":"set","node":{"key":"/conftool/v1/pools/eqiad/mw1","value":"{\"pooled\":\"yes\"}","modifiedIndex":12,"createdIndex":12}}`)
	f.Fuzz(func(t *testing.T, mapping byte, raw string) {
		var resp client.Response
		if err := json.Unmarshal([]byte(raw), &resp); err != nil || resp.Node == nil {
			return
		}
		resp.Node.Key = cleanFuzzKey(resp.Node.Key)
		if resp.PrevNode != nil {
			resp.PrevNode.Key = resp.Node.Key
		}
		m := fuzzMirror(t, mapping)
		ev, err := m.classify(item{ev: &resp, index: resp.Node.ModifiedIndex})
		if err != nil {
			var ref *RefusalError
			if !errors.As(err, &ref) || !strings.Contains(ref.Reason, strconv.Quote(resp.Action)) {
				t.Fatalf("unexpected error for action %q: %v", resp.Action, err)
			}
			return
		}
		if ev == nil {
			return
		}
		if !under(m.keys.dstBase, ev.dstKey) {
			t.Fatalf("event on %s writes %s, outside the destination base %s", ev.srcKey, ev.dstKey, m.keys.dstBase)
		}
		if !ev.clearBase && m.keys.toSrc(ev.dstKey) != ev.srcKey {
			t.Fatalf("%s maps to %s, which maps back to %s", ev.srcKey, ev.dstKey, m.keys.toSrc(ev.dstKey))
		}
		after := ev.after()
		if !matchesAfter(after, after) {
			t.Fatalf("the result %s of %s is not recognised as applied", after, ev.action)
		}
		if after.exists && !after.dir && after.expires != nil && ttl(after.expires, time.Now()) < time.Second {
			t.Fatal("a TTL below one second")
		}
		for _, o := range v3Ops(ev) {
			if !under(m.keys.dstBase, o.key) {
				t.Fatalf("v3 write of %s outside the destination base %s", o.key, m.keys.dstBase)
			}
			if o.prefix && !o.del {
				t.Fatalf("a range write that is not a deletion: %+v", o)
			}
			if o.del && (o.value != "" || o.expires != nil) {
				t.Fatalf("a deletion carries a value or a TTL: %+v", o)
			}
			if o.check && o.before.dir {
				t.Fatalf("a v3 write expects a v2 directory, which v3 cannot hold: %+v", o)
			}
		}
	})
}

// cleanFuzzKey makes an arbitrary string a key etcd could send: absolute,
// no empty or dot segments.
func cleanFuzzKey(k string) string {
	var parts []string
	for _, p := range strings.Split(k, "/") {
		if p != "" && p != "." && p != ".." {
			parts = append(parts, p)
		}
	}
	return "/" + strings.Join(parts, "/")
}
