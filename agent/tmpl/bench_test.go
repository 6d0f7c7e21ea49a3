package tmpl

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// poolStore holds one pybal pool of n hosts with conftool's value encoding
// and a mix of pooled states.
func poolStore(n int) *Store {
	states := []string{"yes", "yes", "yes", "no", "inactive"}
	keys := make(map[string]string, n)
	for i := range n {
		keys[fmt.Sprintf("/pools/eqiad/kubernetes/kubesvc/kubernetes%04d.eqiad.wmnet", 1001+i)] =
			fmt.Sprintf(`{"weight": %d, "pooled": "%s"}`, 10*(1+i%3), states[i%len(states)])
	}
	return NewStore(keys)
}

func pybalTemplate(b *testing.B) *Template {
	text, err := os.ReadFile(filepath.Join("testdata", "pybal-pool.tmpl"))
	if err != nil {
		b.Fatal(err)
	}
	pool := strings.ReplaceAll(string(text), "/pools/eqiad/appserver/apache2/", "/pools/eqiad/kubernetes/kubesvc/")
	tp, err := Parse("pybal-pool.tmpl", pool, Env{})
	if err != nil {
		b.Fatal(err)
	}
	return tp
}

// BenchmarkExecutePybalPool250 renders the §4.1 pybal pool template over a
// 250-host pool: one ls, 250 getv and 250 json per render.
func BenchmarkExecutePybalPool250(b *testing.B) {
	tp, store := pybalTemplate(b), poolStore(250)
	b.ReportAllocs()
	for b.Loop() {
		if err := tp.Execute(io.Discard, store); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExecutePybalPool250Parallel is the same render from every CPU
// at once on one Template and one Store.
func BenchmarkExecutePybalPool250Parallel(b *testing.B) {
	tp, store := pybalTemplate(b), poolStore(250)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := tp.Execute(io.Discard, store); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkParsePybalPool(b *testing.B) {
	text, err := os.ReadFile(filepath.Join("testdata", "pybal-pool.tmpl"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("pybal-pool.tmpl", string(text), Env{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewStore10k builds a store from a 10k-key conftool-like tree.
func BenchmarkNewStore10k(b *testing.B) {
	keys := make(map[string]string, 10000)
	for i := range 10000 {
		keys[fmt.Sprintf("/conftool/v1/pools/dc%d/cluster%02d/service%d/host%05d.example.wmnet", i%7, i%31, i%5, i)] =
			`{"weight": 10, "pooled": "yes"}`
	}
	b.ReportAllocs()
	for b.Loop() {
		NewStore(keys)
	}
}
