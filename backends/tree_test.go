package backends

import (
	"fmt"
	"math/rand"
	"reflect"
	"sort"
	"testing"
)

func TestTreeMatchesAMapUnderRandomUpdates(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	model := map[string]string{}
	tree := &Tree{}
	var history []*Tree
	var models []map[string]string
	keys := []string{"/a", "/a/b", "/a/b/c", "/a/bc", "/ab", "/x/y/z", "/x/y", "/x/w", "/q"}
	for step := 0; step < 3000; step++ {
		k := keys[rng.Intn(len(keys))]
		if rng.Intn(3) == 0 {
			tree = tree.Delete(k)
			for mk := range model {
				if Covers(k, mk) {
					delete(model, mk)
				}
			}
		} else {
			v := fmt.Sprint(step)
			tree = tree.Set(k, v)
			model[k] = v
		}
		if step%100 == 0 {
			history = append(history, tree)
			models = append(models, copyMap(model))
		}
		if got := tree.Leaves("/"); !reflect.DeepEqual(got, model) {
			t.Fatalf("step %d: tree %v, model %v", step, got, model)
		}
		if tree.Len() != len(model) {
			t.Fatalf("step %d: Len %d, want %d", step, tree.Len(), len(model))
		}
	}
	// Old versions never change under later updates.
	for i, old := range history {
		if got := old.Leaves("/"); !reflect.DeepEqual(got, models[i]) {
			t.Fatalf("snapshot %d mutated: %v, want %v", i, got, models[i])
		}
	}
}

func TestWalkIsSegmentAware(t *testing.T) {
	tree := (&Tree{}).Set("/app/x", "1").Set("/apple/y", "2").Set("/app", "3")
	got := tree.Leaves("/app")
	want := map[string]string{"/app": "3", "/app/x": "1"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Leaves(/app) = %v, want %v", got, want)
	}
	if len(tree.Leaves("/ap")) != 0 {
		t.Fatal("/ap matched /app")
	}
}

func TestDiffReportsChangedKeysOnly(t *testing.T) {
	a := (&Tree{}).Set("/p/eqiad/h1", "x").Set("/p/eqiad/h2", "y").Set("/p/codfw/h3", "z")
	b := a.Set("/p/eqiad/h2", "Y").Delete("/p/codfw").Set("/p/esams/h4", "w").Set("/p/eqiad/h1", "x")
	var got []string
	Diff(a, b, func(k string) { got = append(got, k) })
	sort.Strings(got)
	want := []string{"/p/codfw/h3", "/p/eqiad/h2", "/p/esams/h4"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Diff = %v, want %v", got, want)
	}
}

func TestMinimalRoots(t *testing.T) {
	got := MinimalRoots([]string{"/app/x", "/apple", "/app", "/b/c/", "/b/c/d", "//b/c"})
	want := []string{"/app", "/apple", "/b/c"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("MinimalRoots = %v, want %v", got, want)
	}
	if got := MinimalRoots([]string{"/x", "/"}); !reflect.DeepEqual(got, []string{"/"}) {
		t.Fatalf("root not absorbing: %v", got)
	}
}

func copyMap(m map[string]string) map[string]string {
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func TestBuilderMatchesSet(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	var b Builder
	viaSet := &Tree{}
	for i := 0; i < 2000; i++ {
		k := fmt.Sprintf("/p/%d/c%d/h%d", rng.Intn(5), rng.Intn(20), rng.Intn(50))
		v := fmt.Sprint(i)
		b.Set(k, v)
		viaSet = viaSet.Set(k, v)
	}
	built := b.Tree()
	if !reflect.DeepEqual(built.Leaves("/"), viaSet.Leaves("/")) || built.Len() != viaSet.Len() {
		t.Fatal("Builder and Set disagree")
	}
	var diffs []string
	Diff(built, viaSet, func(k string) { diffs = append(diffs, k) })
	if len(diffs) != 0 {
		t.Fatalf("Diff finds %v", diffs)
	}
	// The built tree takes updates like any other.
	if got := built.Set("/p/9/x", "y").Len(); got != built.Len()+1 {
		t.Fatalf("Len after Set %d", got)
	}
	var empty Builder
	if empty.Tree().Len() != 0 || len(empty.Tree().Leaves("/")) != 0 {
		t.Fatal("empty builder")
	}
}
