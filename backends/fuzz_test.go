package backends

import (
	"path"
	"slices"
	"strings"
	"testing"
)

// Fuzz targets for the key helpers every package leans on. Each checks a
// property, or agreement with a slow and obvious second implementation,
// not only that nothing crashes. Seeds: f.Add below and
// testdata/fuzz/<name>. Run one for longer with
//
//	go test -run '^$' -fuzz '^FuzzCleanKey$' -fuzztime 1m ./backends
//
// or all of them with scripts/fuzz.sh.

// hostileKeys are the shapes of key that broke or nearly broke something.
var hostileKeys = []string{
	"", "/", "//", "///", ".", "..", "/.", "/..", "/../..", "a", "/a", "a/", "/a/",
	"//a//b//", "/a/./b", "/a/../b", "/a/b/..", "/a/b/../..", "/a/b/../../..", "../a",
	"/app", "/apple", "/app/le", "/app/", "/app/.", "/app/..", "/app/_hidden", "/_a/b",
	"/a\x00b", "/\xff\xfe", "/a b/ c", "/a/...", "/.../a", "/a/.b", `\a\b`, "/a%2Fb",
}

// FuzzCleanKey: CleanKey agrees with path.Clean on "/"+key (its fast path
// for clean keys must not change the answer), its result is clean and
// absolute, and cleaning is idempotent.
func FuzzCleanKey(f *testing.F) {
	for _, k := range hostileKeys {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		got := CleanKey(key)
		if want := path.Clean("/" + key); got != want {
			t.Fatalf("CleanKey(%q) = %q, want %q", key, got, want)
		}
		if got == "" || got[0] != '/' || !isClean(got) {
			t.Fatalf("CleanKey(%q) = %q: not a clean absolute key", key, got)
		}
		if again := CleanKey(got); again != got {
			t.Fatalf("CleanKey not idempotent: %q -> %q -> %q", key, got, again)
		}
		if isClean(key) != (key == got) {
			t.Fatalf("isClean(%q) = %v, but CleanKey gives %q", key, isClean(key), got)
		}
		for _, seg := range Segments(got) {
			if seg == "." || seg == ".." || strings.Contains(seg, "/") {
				t.Fatalf("CleanKey(%q) = %q has segment %q", key, got, seg)
			}
		}
	})
}

// coversBySegments is Covers the slow way: root's segments are a prefix of
// key's, after both are cleaned.
func coversBySegments(root, key string) bool {
	r, k := Segments(path.Clean("/"+root)), Segments(path.Clean("/"+key))
	return len(r) <= len(k) && slices.Equal(r, k[:len(r)])
}

// FuzzCovers: Covers is segment-wise (never /app for /apple), reflexive,
// antisymmetric, and everything lies under the root "/".
func FuzzCovers(f *testing.F) {
	for i, k := range hostileKeys {
		f.Add(k, hostileKeys[(i+1)%len(hostileKeys)])
		f.Add(k, k+"le")
		f.Add(k, k+"/x")
	}
	f.Add("/app", "/apple")
	f.Add("/apple", "/app")
	f.Add("/app/", "/app/x/..")
	f.Fuzz(func(t *testing.T, root, key string) {
		got := Covers(root, key)
		if want := coversBySegments(root, key); got != want {
			t.Fatalf("Covers(%q, %q) = %v, want %v (segment-wise)", root, key, got, want)
		}
		if !Covers(root, root) || !Covers(key, key) {
			t.Fatalf("Covers not reflexive on %q or %q", root, key)
		}
		if !Covers("/", key) || !Covers("", key) {
			t.Fatalf("the root does not cover %q", key)
		}
		if got && Covers(key, root) && CleanKey(root) != CleanKey(key) {
			t.Fatalf("%q and %q cover each other but differ", root, key)
		}
		// Whatever covers key covers everything below it, and nothing
		// that merely extends its last segment.
		if got {
			if below := CleanKey(key) + "/x"; !Covers(root, below) {
				t.Fatalf("Covers(%q, %q) but not %q", root, key, below)
			}
		}
		if r := CleanKey(root); r != "/" && Covers(root, r+"x") {
			t.Fatalf("Covers(%q, %q): a longer name is not below", root, r+"x")
		}
	})
}

// FuzzMinimalRoots: the roots are clean, sorted and distinct, each is one
// of the keys, none covers another, and every key is covered by exactly
// one root. Reducing the roots again, or the keys in another order, gives
// the same roots.
func FuzzMinimalRoots(f *testing.F) {
	f.Add("/a\n/a/b\n/ab\n/app\n/apple\n/app/x")
	f.Add("/conftool/v1/pools/eqiad/appserver\n/conftool/v1/pools/eqiad\n/conftool/v1/pools/codfw/x")
	f.Add("/\n/a")
	f.Add("a/\n/a/./b\n//a\n/a/../b\n/b/c")
	f.Add("/a-b\n/a/b\n/a.b\n/a")
	f.Add("")
	f.Add("/x/_hidden\n/x\n/_y")
	f.Fuzz(func(t *testing.T, list string) {
		keys := strings.Split(list, "\n")
		if len(keys) > 200 {
			keys = keys[:200] // MinimalRoots is quadratic by design: keys are resources' few keys
		}
		roots := MinimalRoots(keys)
		if !slices.IsSorted(roots) || len(slices.Compact(slices.Clone(roots))) != len(roots) {
			t.Fatalf("roots %q are not sorted and distinct", roots)
		}
		cleaned := make([]string, len(keys))
		for i, k := range keys {
			cleaned[i] = CleanKey(k)
		}
		for i, r := range roots {
			if r != CleanKey(r) {
				t.Fatalf("root %q is not clean", r)
			}
			if !slices.Contains(cleaned, r) {
				t.Fatalf("root %q is none of the keys %q", r, keys)
			}
			for j, other := range roots {
				if i != j && Covers(r, other) {
					t.Fatalf("root %q covers root %q", r, other)
				}
			}
		}
		for _, k := range keys {
			n := 0
			for _, r := range roots {
				if Covers(r, k) {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("key %q is covered by %d of the roots %q", k, n, roots)
			}
		}
		if again := MinimalRoots(roots); !slices.Equal(again, roots) {
			t.Fatalf("MinimalRoots(%q) = %q, not the same roots", roots, again)
		}
		reversed := slices.Clone(keys)
		slices.Reverse(reversed)
		if other := MinimalRoots(reversed); !slices.Equal(other, roots) {
			t.Fatalf("keys in reverse order give %q, not %q", other, roots)
		}
	})
}
