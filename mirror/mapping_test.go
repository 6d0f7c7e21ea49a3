package mirror

import (
	"testing"
)

func TestKeyMappingMatchesEtcdmirror(t *testing.T) {
	// etcdmirror's own test cases (dst prefix, src prefix with --strip or
	// "" without, source key → destination key), plus trailing slashes.
	cases := []struct {
		dst, src string
		strip    bool
		key      string
		want     string
	}{
		{"/test", "/", false, "/example/key", "/test/example/key"},
		{"/test", "/example", true, "/example/key", "/test/key"},
		{"/", "/", false, "/example/key", "/example/key"},
		{"/", "/example", true, "/example/key", "/key"},
		{"/test", "/", true, "/example/key", "/test/example/key"},
		{"/", "/", true, "/example/key", "/example/key"},
		{"/test/", "/example/", true, "/example/key", "/test/key"},
		{"/replica", "/conftool", false, "/conftool/v1/x", "/replica/conftool/v1/x"},
		{"/replica", "/conftool", true, "/conftool", "/replica"},
	}
	for _, c := range cases {
		m := newKeyMap(c.src, c.dst, c.strip)
		if got := m.toDst(c.key); got != c.want {
			t.Errorf("dst %s src %s strip %t: %s maps to %s, want %s", c.dst, c.src, c.strip, c.key, got, c.want)
		}
		if back := m.toSrc(c.want); back != c.key {
			t.Errorf("dst %s src %s strip %t: %s maps back to %s, want %s", c.dst, c.src, c.strip, c.want, back, c.key)
		}
	}
}

func TestPrefixMatchIsAnchoredAtPathBoundary(t *testing.T) {
	for _, c := range []struct {
		root, key string
		want      bool
	}{
		{"/conftool", "/conftool", true},
		{"/conftool", "/conftool/v1", true},
		{"/conftool", "/conftool2/v1", false},
		{"/conftool", "/conf", false},
		{"/conftool", "/x/conftool", false},
		{"/", "/anything", true},
	} {
		if got := under(c.root, c.key); got != c.want {
			t.Errorf("under(%s, %s) = %t, want %t", c.root, c.key, got, c.want)
		}
	}
}

func TestIndexKeyShapes(t *testing.T) {
	for dst, want := range map[string]string{
		"/conftool": "/__replication/conftool",
		"/":         "/__replication/__ROOT__",
		"/a/b/":     "/__replication/a/b",
	} {
		m := newKeyMap("/", dst, false)
		if m.indexKey() != want || m.stateKey() != want+".source" {
			t.Errorf("dst %s: index key %s state key %s, want %s and %s.source", dst, m.indexKey(), m.stateKey(), want, want)
		}
	}
}

func TestHiddenIsJudgedBelowTheSourceRoot(t *testing.T) {
	m := newKeyMap("/_locks", "/replica", true)
	if m.hidden("/_locks/a") {
		t.Error("a hidden source root hides its own children")
	}
	if !m.hidden("/_locks/a/_b") {
		t.Error("a hidden segment below the root is not hidden")
	}
	root := newKeyMap("/", "/", false)
	if !root.hidden("/__replication/x") || root.hidden("/a_b/c") {
		t.Error("hidden test is not per segment")
	}
}

func TestIgnoreRegexMatchesWholeKey(t *testing.T) {
	re, err := compileIgnore(`/spicerack/locks/etcd(/.*)?`)
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]bool{
		"/spicerack/locks/etcd":        true,
		"/spicerack/locks/etcd/x":      true,
		"/spicerack/locks/etcdx":       false,
		"/a/spicerack/locks/etcd":      false,
		"/spicerack/locks/etcd/x/y/_z": true,
	} {
		if got := re.MatchString(key); got != want {
			t.Errorf("%s: match %t, want %t", key, got, want)
		}
	}
	// Alternation must not escape the anchors.
	re, _ = compileIgnore(`/a|/b`)
	if re.MatchString("/a/x") || re.MatchString("/x/b") {
		t.Error("alternation escaped the full-match anchors")
	}
}

func TestTrackerKeepsRelatedKeysInOrder(t *testing.T) {
	tr := newTracker(8, 0)
	mk := func(idx uint64, key string) *task { return &task{index: idx, ev: &event{dstKey: key}} }
	a := mk(1, "/r/a")
	b := mk(2, "/r/b")
	if err := tr.admit(t.Context(), a); err != nil {
		t.Fatal(err)
	}
	if err := tr.admit(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	if !tr.conflicts("/r") || !tr.conflicts("/r/a/x") || tr.conflicts("/r/c") {
		t.Fatal("conflict detection is not by path relation")
	}
	// b finishes first: the watermark must wait for a.
	if w := tr.finish(b); w != 0 {
		t.Fatalf("watermark %d passed an unfinished event", w)
	}
	if w := tr.finish(a); w != 2 {
		t.Fatalf("watermark %d, want 2", w)
	}
	tr.skip(5)
	if tr.current() != 5 {
		t.Fatalf("watermark %d after a skipped index, want 5", tr.current())
	}
}

func TestTrackerAsksForIntentOnRelatedUnpersistedKeys(t *testing.T) {
	tr := newTracker(8, 10)
	mk := func(idx uint64, key string) *task { return &task{index: idx, ev: &event{dstKey: key}} }
	if tr.needsIntent([]*task{mk(11, "/r/a"), mk(12, "/r/b")}) {
		t.Fatal("independent keys asked for a replay window")
	}
	if !tr.needsIntent([]*task{mk(13, "/r/a")}) {
		t.Fatal("a second unpersisted event on /r/a did not")
	}
	if !tr.needsIntent([]*task{mk(14, "/r")}) {
		t.Fatal("a directory above unpersisted keys did not")
	}
	tr.markPersisted(14)
	if tr.needsIntent([]*task{mk(15, "/r/a")}) {
		t.Fatal("persisted events still count")
	}
}
