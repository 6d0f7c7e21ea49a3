package tmpl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// Fuzz targets for the template functions on the values etcd hands them:
// anything at all. Each call must return (a value or an error) without
// panicking, in bounded time and with a result bounded by its input.
// Seeds: f.Add below and testdata/fuzz/<name>. Run one for longer with
//
//	go test -run '^$' -fuzz '^FuzzFunctions$' -fuzztime 1m ./agent/tmpl
//
// or all of them with scripts/fuzz.sh.

// hangLimit is how long one fuzz input may take before it counts as a
// hang. It is far above what any input needs, even under -race on a
// loaded machine; the point is to turn an endless loop into a crash that
// the fuzzer records, rather than a worker that never answers.
const hangLimit = 30 * time.Second

// watchdog crashes the process, naming what, if stop is not called within
// hangLimit.
func watchdog(what string) (stop func() bool) {
	return time.AfterFunc(hangLimit, func() { panic(fmt.Sprintf("hang: %s did not return in %v", what, hangLimit)) }).Stop
}

// fuzzEnv is deterministic and offline: DNS fails at once, so lookups of
// hostile names cost nothing.
func fuzzEnv() Env {
	return Env{
		Getenv:   func(k string) string { return map[string]string{"DC": "eqiad"}[k] },
		Hostname: func() (string, error) { return "mw1261.eqiad.wmnet", nil },
		Now:      func() time.Time { return fixedNow },
		Resolver: &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
			return nil, errors.New("no DNS while fuzzing")
		}},
		LookupTimeout: time.Second,
	}
}

// hostileStore holds keys shaped like the site's, hidden segments and a
// key that is also a directory included, with the hostile values.
func hostileStore(a, b string) *Store {
	return NewStore(map[string]string{
		"/pools/eqiad/appserver/mw1": a,
		"/pools/eqiad/appserver/mw2": b,
		"/pools/eqiad/_hidden/x":     a,
		"/pools/codfw":               b,
		"/pools/codfw/x":             a,
		"/" + path.Clean(a):          b,
	})
}

// anyValues are what a template can hand a function that takes any: the
// strings, numbers, lists and maps the other functions return, the
// decoded JSON of a value, and nil.
func anyValues(a, b string, i, j int) []any {
	vals := []any{a, b, i, float64(j), nil, true, strings.Split(a, "/"),
		KVPairs{{a, b}, {b, a}}, []KVPair{{a, b}}, map[string]any{a: b}, []any{a, i}, []int{i, j}}
	var decoded any
	if json.Unmarshal([]byte(a), &decoded) == nil {
		vals = append(vals, decoded)
	}
	return vals
}

// argSets returns the argument lists to call a function of type ft with:
// every combination of candidates per parameter, the variadic tail empty
// or holding one or two values.
func argSets(t *testing.T, name string, ft reflect.Type, a, b string, i, j int) [][]reflect.Value {
	strs, ints, anys := []string{a, b, a}, []int{i, j}, anyValues(a, b, i, j)
	candidates := func(p int, pt reflect.Type) []reflect.Value {
		var out []reflect.Value
		switch pt {
		case reflect.TypeFor[string]():
			out = append(out, reflect.ValueOf(strs[p%len(strs)]))
		case reflect.TypeFor[int]():
			out = append(out, reflect.ValueOf(ints[p%len(ints)]))
		case reflect.TypeFor[[]string]():
			out = append(out, reflect.ValueOf(strings.Split(a, "/")), reflect.ValueOf([]string(nil)))
		case reflect.TypeFor[KVPairs]():
			out = append(out, reflect.ValueOf(KVPairs{{a, b}, {b, a}, {"", ""}}), reflect.ValueOf(KVPairs(nil)))
		case reflect.TypeFor[any]():
			for _, v := range anys {
				if v == nil {
					out = append(out, reflect.Zero(pt))
				} else {
					out = append(out, reflect.ValueOf(v))
				}
			}
		default:
			t.Fatalf("function %s takes a %v: teach argSets hostile values of that type", name, pt)
		}
		return out
	}
	fixed := ft.NumIn()
	if ft.IsVariadic() {
		fixed--
	}
	sets := [][]reflect.Value{{}}
	for p := range fixed {
		var next [][]reflect.Value
		for _, set := range sets {
			for _, c := range candidates(p, ft.In(p)) {
				next = append(next, append(slices.Clone(set), c))
			}
		}
		sets = next
	}
	if !ft.IsVariadic() {
		return sets
	}
	elem := ft.In(fixed).Elem()
	var out [][]reflect.Value
	for _, set := range sets {
		out = append(out, set)
		for _, c := range candidates(fixed, elem) {
			out = append(out, append(slices.Clone(set), c))
			out = append(out, append(slices.Clone(set), c, reflect.ValueOf(strs[1]).Convert(elem)))
		}
	}
	return out
}

// sizeOf is roughly how many bytes v holds.
func sizeOf(v reflect.Value, depth int) int {
	if depth > 50 {
		return 0
	}
	switch v.Kind() {
	case reflect.String:
		return v.Len()
	case reflect.Slice, reflect.Array:
		n := 8 * v.Len()
		for k := range v.Len() {
			n += sizeOf(v.Index(k), depth+1)
		}
		return n
	case reflect.Map:
		n := 0
		for it := v.MapRange(); it.Next(); {
			n += 16 + sizeOf(it.Key(), depth+1) + sizeOf(it.Value(), depth+1)
		}
		return n
	case reflect.Interface, reflect.Pointer:
		if v.IsNil() {
			return 0
		}
		return sizeOf(v.Elem(), depth+1)
	case reflect.Struct:
		n := 0
		for k := range v.NumField() {
			n += sizeOf(v.Field(k), depth+1)
		}
		return n
	}
	return 8
}

// FuzzFunctions calls every template function (FUNCTIONS.md; the key
// functions on a store holding the values) with hostile strings and
// numbers: huge, empty, invalid UTF-8, paths with ../ and //, keys with
// hidden segments, JSON that is not JSON. A call may fail, but never
// panic, hang or return more than its input allows: at most quadratic in
// the input's size (replace), or seq's cap of 2^20 numbers.
func FuzzFunctions(f *testing.F) {
	f.Add("/pools/eqiad/appserver/mw1", "{\"weight\": 10, \"pooled\": \"yes\"}", 1, 3)
	f.Add("", "", 0, 0)
	f.Add("../../etc/passwd", "//a//b/", -1, 1)
	f.Add("/pools/eqiad/_hidden", "/pools/*/*", math.MinInt, math.MaxInt)
	f.Add("\xff\xfe\xfd", "\x00", math.MaxInt-1, math.MaxInt)
	f.Add("[[[[[[[[[[[[", "{\"a\":", -1<<20, 1<<20)
	f.Add(strings.Repeat("[", 20000), "1e999", math.MinInt, -1)
	f.Add("/pools/[", "\\", 0, maxSeq-1)
	f.Add("a", "", 1<<30, -1)
	f.Add("dGVzdA==", "true", 7, -2)
	f.Add("mw1261.eqiad.wmnet", "_etcd-server-ssl._tcp", 1, 0)
	f.Add(strings.Repeat("x", 300), "localhost", 0, 1)
	funcs := builtinFuncs(fuzzEnv().withDefaults())
	names := slices.Sorted(func(yield func(string) bool) {
		for name := range funcs {
			if !yield(name) {
				return
			}
		}
	})
	for name := range storeFuncs(nil) {
		names = append(names, name)
	}
	f.Fuzz(func(t *testing.T, a, b string, i, j int) {
		stop := watchdog(fmt.Sprintf("template functions on %q %q %d %d", a, b, i, j))
		defer stop()
		bound := 4*(len(a)+len(b)+64)*(len(a)+len(b)+64) + 16*(maxSeq+1)
		store := hostileStore(a, b)
		for k, fn := range storeFuncs(store) {
			funcs[k] = fn
		}
		for _, name := range names {
			fn := reflect.ValueOf(funcs[name])
			for _, args := range argSets(t, name, fn.Type(), a, b, i, j) {
				for _, out := range fn.Call(args) {
					if n := sizeOf(out, 0); n > bound {
						t.Fatalf("%s%v returned %d bytes from %d bytes of input", name, args, n, len(a)+len(b))
					}
				}
			}
		}
	})
}

// FuzzStore builds a store from hostile keys (cleaned, as every backend
// cleans them) and checks each key function against the obvious, slow
// reading of its documentation in FUNCTIONS.md: gets is path.Match over
// every key, ls and lsdir list the first segment below dir, get, getv and
// exists look up the key as written. Results are sorted and fresh:
// reversing or sorting one in place changes nothing for the next call.
func FuzzStore(f *testing.F) {
	f.Add("/a/b/c\n/a/d\n/app/x\n/apple\n/_h/x\n/a/_h", "/a", "/a/*")
	f.Add("/pools/eqiad/appserver/mw1\n/pools/eqiad/appserver/mw2\n/pools/codfw", "/pools/eqiad/appserver/", "/pools/*/appserver/*")
	f.Add("/a\n/a/b\n/ab\n/a-b\n/a.b", "/a/", "/a*")
	f.Add("/\xff/\xfe\n/x y/z", "/\xff", "/*/?")
	f.Add("/a/b", "//a//", "/a/[b-")
	f.Add("/a/b", "", "")
	f.Add("/a/b\n/c", "a", "\\/a/b")
	f.Add("/a/b\n/c", "/", "/[^a]")
	f.Add("/a/b\n/c", "/a/b/..", "/a/[/]")
	f.Fuzz(func(t *testing.T, keyList, dir, pattern string) {
		stop := watchdog(fmt.Sprintf("the key functions on %q %q %q", keyList, dir, pattern))
		defer stop()
		pairs := map[string]string{}
		for k, key := range strings.Split(keyList, "\n") {
			pairs[path.Clean("/"+key)] = fmt.Sprint(k % 3)
		}
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range pairs {
				if !yield(k) {
					return
				}
			}
		})
		s := NewStore(pairs)

		for _, key := range []string{dir, pattern} {
			want, ok := pairs[key]
			got, err := s.Get(key)
			if ok != (err == nil) || ok && (got.Key != key || got.Value != want) || ok != s.Exists(key) {
				t.Fatalf("get/exists %q = %+v %v %v, want %q %v", key, got, err, s.Exists(key), want, ok)
			}
			if v, err := s.GetValue(key, "default"); err != nil || ok && v != want || !ok && v != "default" {
				t.Fatalf("getv %q = %q %v", key, v, err)
			}
		}

		_, badPattern := path.Match(pattern, "")
		matched, err := s.GetAll(pattern)
		if (err != nil) != (badPattern != nil) {
			t.Fatalf("gets %q: error %v, path.Match says %v", pattern, err, badPattern)
		}
		var want KVPairs
		if err == nil {
			want = KVPairs{}
			for _, k := range keys {
				if ok, _ := path.Match(pattern, k); ok {
					want = append(want, KVPair{k, pairs[k]})
				}
			}
		}
		if !slices.Equal(matched, want) {
			t.Fatalf("gets %q = %v, want %v", pattern, matched, want)
		}
		values, _ := s.GetAllValues(pattern)
		wantValues := []string{}
		for _, kv := range want {
			wantValues = append(wantValues, kv.Value)
		}
		slices.Sort(wantValues)
		if err == nil && !slices.Equal(values, wantValues) {
			t.Fatalf("getvs %q = %q, want %q", pattern, values, wantValues)
		}

		list, dirs := s.List(dir), s.ListDir(dir)
		wantList, wantDirs := listBySegments(keys, dir)
		if _, ok := pairs[dir]; ok {
			wantList = append(wantList, path.Base(dir))
		}
		slices.Sort(wantList)
		wantList = slices.Compact(wantList)
		if !slices.Equal(list, wantList) || !slices.Equal(dirs, wantDirs) {
			t.Fatalf("ls %q = %q, lsdir = %q; want %q and %q", dir, list, dirs, wantList, wantDirs)
		}

		slices.Reverse(list)
		sortByLength(dirs)
		reverse(matched)
		if again := s.List(dir); !slices.Equal(again, wantList) {
			t.Fatalf("ls %q after reversing its result = %q", dir, again)
		}
		if again, _ := s.GetAll(pattern); !slices.Equal(again, want) {
			t.Fatalf("gets %q after reversing its result = %v", pattern, again)
		}
	})
}

// listBySegments is ls and lsdir the slow way: the segment right below the
// cleaned, absolute dir of every key below it (a relative dir lists
// nothing, as in confd).
func listBySegments(keys []string, dir string) (names, dirs []string) {
	names, dirs = []string{}, []string{}
	clean := path.Clean(dir)
	if !strings.HasPrefix(clean, "/") {
		return names, dirs
	}
	base := strings.Split(strings.Trim(clean, "/"), "/")
	if clean == "/" {
		base = nil
	}
	for _, k := range keys {
		segs := strings.Split(strings.Trim(k, "/"), "/")
		if k == "/" || len(segs) <= len(base) || !slices.Equal(segs[:len(base)], base) {
			continue
		}
		names = append(names, segs[len(base)])
		if len(segs) > len(base)+1 {
			dirs = append(dirs, segs[len(base)])
		}
	}
	slices.Sort(names)
	slices.Sort(dirs)
	return slices.Compact(names), slices.Compact(dirs)
}

// FuzzRender renders the site's templates (testdata/*.tmpl) with a
// hostile value in place of one of conftool's, and a hostile key added:
// each render gives its output or an error naming the template file,
// never a panic or a hang.
func FuzzRender(f *testing.F) {
	f.Add(uint8(0), "{\"weight\": 10, \"pooled\": \"yes\"}", "pools/eqiad/appserver/apache2/new", "x")
	f.Add(uint8(1), "not json", "", "")
	f.Add(uint8(2), "{\"weight\": \"ten\", \"pooled\": 1}", "../x", "{}")
	f.Add(uint8(3), "[1,2]", "pools/eqiad/appserver/apache2/_hidden", "null")
	f.Add(uint8(4), "{\"pooled\": \"yes\", \"weight\": 1e308}", "//pools//eqiad//", "\xff")
	f.Add(uint8(5), "{\"pooled\": null}", "discovery/appservers-rw/eqiad/x", "true")
	f.Add(uint8(6), "{}", "geodns/text-addrs", "")
	f.Add(uint8(7), "{\"val\": \"\xff\"}", "mediawiki-config/eqiad/ReadOnly", "{\"val\": 12345678901234567890}")
	files, err := filepath.Glob(filepath.Join("testdata", "*.tmpl"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no templates in testdata: %v", err)
	}
	type parsed struct {
		file string
		t    *Template
	}
	var templates []parsed
	for _, file := range files {
		text, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		t, err := Parse(file, string(text), fuzzEnv())
		if err != nil {
			f.Fatal(err)
		}
		templates = append(templates, parsed{file, t})
	}
	fixture := loadFixture(f)
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range fixture {
			if !yield(k) {
				return
			}
		}
	})
	f.Fuzz(func(t *testing.T, which uint8, value, newKey, newValue string) {
		stop := watchdog(fmt.Sprintf("rendering with %q %q %q", value, newKey, newValue))
		defer stop()
		pairs := make(map[string]string, len(fixture)+1)
		for k, v := range fixture {
			pairs[strings.TrimPrefix(k, "/conftool/v1")] = v
		}
		pairs[strings.TrimPrefix(keys[int(which)%len(keys)], "/conftool/v1")] = value
		pairs[path.Clean("/"+newKey)] = newValue
		for _, sub := range []string{"", "/pools", "/mediawiki-config"} {
			view := map[string]string{}
			for k, v := range pairs {
				if rest, ok := strings.CutPrefix(k, sub); ok && strings.HasPrefix(rest, "/") {
					view[rest] = v
				}
			}
			store := NewStore(view)
			for _, p := range templates {
				var out bytes.Buffer
				err := p.t.Execute(&out, store)
				if err != nil && !strings.HasPrefix(err.Error(), "template: "+p.file+":") {
					t.Fatalf("%s: error %q does not name the template", p.file, err)
				}
				if err != nil && out.Len() > 0 {
					t.Fatalf("%s: failed (%v) yet wrote %d bytes", p.file, err, out.Len())
				}
			}
		}
	})
}
