package tmpl

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

const poolPath = "/etc/confd/templates/pool.tmpl"

func TestParseErrorsNameFileAndLine(t *testing.T) {
	tests := []struct {
		name, text, want string
	}{
		{"unknown function", "# header\n{{ nope \"/x\" }}\n", `template: ` + poolPath + `:2: function "nope" not defined`},
		{"unclosed action", "# header\n\n{{ getv \"/x\" \n", "template: " + poolPath + ":4: unclosed action started at " + poolPath + ":3"},
		{"missing end", "{{ range ls \"/\" }}\nx", "template: " + poolPath + ":2: unexpected EOF"},
		{"bad syntax", "a\n{{ if }}\n{{ end }}", "template: " + poolPath + ":2: missing value for if"},
		{"cget is gone", "{{ cget \"/x\" }}", `template: ` + poolPath + `:1: function "cget" not defined`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp, err := Parse(poolPath, tt.text, testEnv(t))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse error = %v, want one containing %q", err, tt.want)
			}
			if tp != nil {
				t.Error("Parse returned a template along with an error")
			}
		})
	}
}

func TestExecuteErrorNamesFileLineAndKey(t *testing.T) {
	text := "# pool\nok: {{ getv \"/app/name\" }}\nport: {{ getv \"/pools/eqiad/missing\" }}\n"
	tp, err := Parse(poolPath, text, testEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	err = tp.Execute(&sb, sample())
	if err == nil {
		t.Fatal("Execute of getv on a missing key: no error")
	}
	for _, want := range []string{"template: " + poolPath + ":3:", "key does not exist: /pools/eqiad/missing"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if !errors.Is(err, ErrNotExist) {
		t.Errorf("error %q does not wrap ErrNotExist", err)
	}
	// Line 2 rendered before the failure, but none of it may reach the
	// writer: a caller must never see half a file.
	if sb.Len() != 0 {
		t.Errorf("Execute wrote %q before failing", sb.String())
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestExecuteWriteError(t *testing.T) {
	tp, err := Parse(poolPath, "x", testEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	err = tp.Execute(failingWriter{}, nil)
	if err == nil || !strings.Contains(err.Error(), poolPath) || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("Execute to a failing writer: error = %v", err)
	}
}

func TestTemplateName(t *testing.T) {
	tp, err := Parse(poolPath, "", Env{})
	if err != nil {
		t.Fatal(err)
	}
	if tp.Name() != poolPath {
		t.Errorf("Name() = %q", tp.Name())
	}
}

// Sub-templates defined in the file work, and the key functions inside
// them read the store of the current execution.
func TestDefinedTemplates(t *testing.T) {
	text := `{{define "host"}}{{.}}={{getv (printf "/pools/%s" .)}}{{end}}` +
		`{{range ls "/pools"}}{{template "host" .}};{{end}}`
	tp, err := Parse(poolPath, text, testEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"1", "2"} {
		var sb strings.Builder
		if err := tp.Execute(&sb, NewStore(map[string]string{"/pools/a": v, "/pools/b": v})); err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("a=%s;b=%s;", v, v); sb.String() != want {
			t.Errorf("got %q, want %q", sb.String(), want)
		}
	}
}

// One parsed template executed from many goroutines, each with its own
// store, must give each goroutine its own store's rendering (-race checks
// for shared mutable state).
func TestConcurrentExecute(t *testing.T) {
	text := `{{range $h := ls "/pools/eqiad/appserver/apache2"}}` +
		`{{$d := json (getv (printf "/pools/eqiad/appserver/apache2/%s" $h))}}{{$h}}:{{$d.weight}} {{end}}` +
		`{{reverse (ls "/pools/eqiad/appserver/apache2")}}`
	tp, err := Parse(poolPath, text, testEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	const workers = 8
	stores := make([]*Store, workers)
	wants := make([]string, workers)
	for w := range workers {
		stores[w] = NewStore(map[string]string{
			"/pools/eqiad/appserver/apache2/mw1": fmt.Sprintf(`{"weight": %d, "pooled": "yes"}`, w),
			"/pools/eqiad/appserver/apache2/mw2": fmt.Sprintf(`{"weight": %d, "pooled": "no"}`, 100+w),
		})
		wants[w] = fmt.Sprintf("mw1:%d mw2:%d [mw2 mw1]", w, 100+w)
	}
	shared := stores[0] // also read by every goroutine at once
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for range 50 {
				for _, c := range []struct {
					s    *Store
					want string
				}{{stores[w], wants[w]}, {shared, wants[0]}} {
					var sb strings.Builder
					if err := tp.Execute(&sb, c.s); err != nil {
						t.Error(err)
						return
					}
					if sb.String() != c.want {
						t.Errorf("worker %d got %q, want %q", w, sb.String(), c.want)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

func TestExecuteNilStore(t *testing.T) {
	got, err := render(t, testEnv(t), nil, `{{ls "/"}} {{lsdir "/"}} {{exists "/a"}} {{getv "/a" "d"}} {{len (gets "/*")}}`)
	if err != nil || got != "[] [] false d 0" {
		t.Errorf("nil store: %q, %v", got, err)
	}
}
