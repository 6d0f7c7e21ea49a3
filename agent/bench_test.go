package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/internal/fixture"
)

// benchResource is a pybal pool resource over a 250-host pool inside a
// 10k-key tree.
func benchResource(b *testing.B) (*Resource, Snapshots) {
	b.Helper()
	var builder backends.Builder
	for k, v := range fixture.Generate(fixture.Options{Seed: 1, Keys: 10000}).Values {
		builder.Set(k, v)
	}
	for i := 0; i < 250; i++ {
		builder.Set(fmt.Sprintf("%s/pools/eqiad/big/web/host%03d.eqiad.wmnet", fixture.Prefix, i), fixture.NodeValue(10, "yes"))
	}
	tree := builder.Tree()
	out := b.TempDir()
	dir := confdir(b, map[string]string{
		"conf.d/pool.toml": fmt.Sprintf("[template]\nsrc = \"pool.tmpl\"\ndest = %q\nprefix = %q\nkeys = [\"/pools/eqiad/big/web/\"]\n",
			filepath.Join(out, "pool"), fixture.Prefix),
		"templates/pool.tmpl": `{{range $node := ls "/pools/eqiad/big/web/"}}{{$data := json (getv (printf "/pools/eqiad/big/web/%s" $node))}}
{{if ne $data.pooled "inactive"}}{ 'host': '{{$node}}', 'weight':{{$data.weight}}, 'enabled': {{if eq $data.pooled "yes"}}True{{else}}False{{end}} }{{end}}{{end}}
`,
	})
	r, err := Load(filepath.Join(dir, "conf.d/pool.toml"), LoadOptions{ConfDir: dir})
	if err != nil {
		b.Fatal(err)
	}
	return r, Snapshots{fixture.Prefix: {Root: fixture.Prefix, Tree: tree}}
}

// BenchmarkApplyUnchanged is the steady-state cost of one resource: build
// its view, render, compare with the file on disk, touch nothing.
func BenchmarkApplyUnchanged(b *testing.B) {
	r, snaps := benchResource(b)
	if o := r.Apply(context.Background(), r.View(snaps), Options{}); o.Err != nil {
		b.Fatal(o.Err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if o := r.Apply(context.Background(), r.View(snaps), Options{}); o.Err != nil || o.Changed {
			b.Fatal(o.Err, o.Changed)
		}
	}
}

// BenchmarkApplyChanged adds the write: stage file, fsync, rename, fsync
// of the directory.
func BenchmarkApplyChanged(b *testing.B) {
	r, snaps := benchResource(b)
	key := fixture.Prefix + "/pools/eqiad/big/web/host000.eqiad.wmnet"
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		snap := *snaps[fixture.Prefix]
		snap.Tree = snap.Tree.Set(key, fixture.NodeValue(i, "yes"))
		changed := Snapshots{fixture.Prefix: &snap}
		b.StartTimer()
		if o := r.Apply(context.Background(), r.View(changed), Options{}); o.Err != nil || !o.Changed {
			b.Fatal(o.Err, o.Changed)
		}
	}
}
