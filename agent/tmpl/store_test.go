package tmpl

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
)

// sample is a small tree with the shapes that expose memkv's quirks: a key
// that is a prefix of another segment (/app vs /apple), values whose
// order differs from their keys' order, a leaf at the root, an empty value.
func sample() *Store {
	return NewStore(map[string]string{
		"/app/upstream/app1":   "10.0.1.100:80",
		"/app/upstream/app10":  "10.0.1.1:80",
		"/app/upstream/app2":   "10.0.1.101:80",
		"/app/name":            "myapp",
		"/app/empty":           "",
		"/apple/pie":           "yes",
		"/nginx/port":          "80",
		"/nginx/deep/a/b":      "x",
		"/services/web/c1/1":   `{"IP": "10.0.0.1"}`,
		"/services/web/c2/1":   `{"IP": "10.0.0.3"}`,
		"/services/web/c2/2":   `{"IP": "10.0.0.4"}`,
		"/top":                 "leaf at the root",
		"/pools/eqiad/a/b/mw1": "1",
	})
}

func TestStoreGet(t *testing.T) {
	s := sample()
	tests := []struct {
		key, want string
		wantErr   bool
	}{
		{"/app/name", "myapp", false},
		{"/app/empty", "", false},
		{"/top", "leaf at the root", false},
		{"/app", "", true},       // a directory is not a key
		{"/app/name/", "", true}, // exact match only
		{"/nope", "", true},
	}
	for _, tt := range tests {
		kv, err := s.Get(tt.key)
		if tt.wantErr {
			if err == nil || !errors.Is(err, ErrNotExist) || err.Error() != "key does not exist: "+tt.key {
				t.Errorf("Get(%q) error = %v, want %q", tt.key, err, "key does not exist: "+tt.key)
			}
			if s.Exists(tt.key) {
				t.Errorf("Exists(%q) = true for a missing key", tt.key)
			}
			continue
		}
		if err != nil || kv != (KVPair{tt.key, tt.want}) {
			t.Errorf("Get(%q) = %v, %v; want {%s %s}", tt.key, kv, err, tt.key, tt.want)
		}
		if !s.Exists(tt.key) {
			t.Errorf("Exists(%q) = false", tt.key)
		}
	}
}

func TestStoreGetValue(t *testing.T) {
	s := sample()
	tests := []struct {
		key      string
		defaults []string
		want     string
		wantErr  bool
	}{
		{"/app/name", nil, "myapp", false},
		{"/app/name", []string{"dflt"}, "myapp", false},
		{"/app/empty", []string{"dflt"}, "", false}, // present but empty: the value wins
		{"/nope", []string{"dflt"}, "dflt", false},
		{"/nope", []string{""}, "", false}, // an empty default is a default
		{"/nope", []string{"a", "b"}, "a", false},
		{"/nope", nil, "", true},
	}
	for _, tt := range tests {
		got, err := s.GetValue(tt.key, tt.defaults...)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("GetValue(%q, %q) = %q, %v; want %q (error %v)", tt.key, tt.defaults, got, err, tt.want, tt.wantErr)
		}
	}
}

func keysOf(pairs KVPairs) []string {
	keys := []string{}
	for _, kv := range pairs {
		keys = append(keys, kv.Key)
	}
	return keys
}

func TestStoreGetAll(t *testing.T) {
	s := sample()
	tests := []struct {
		pattern string
		want    []string
	}{
		// * stays inside one segment.
		{"/app/*", []string{"/app/empty", "/app/name"}},
		{"/app/*/*", []string{"/app/upstream/app1", "/app/upstream/app10", "/app/upstream/app2"}},
		{"/*", []string{"/top"}},
		{"/services/web/*/1", []string{"/services/web/c1/1", "/services/web/c2/1"}},
		{"/app/upstream/app?", []string{"/app/upstream/app1", "/app/upstream/app2"}},
		{"/app/upstream/app[12]*", []string{"/app/upstream/app1", "/app/upstream/app10", "/app/upstream/app2"}},
		{"/ap*/pie", []string{"/apple/pie"}},
		{"/app/name", []string{"/app/name"}},
		{`/app/nam\e`, []string{"/app/name"}},
		{"/nope/*", []string{}},
		{"", []string{}},
	}
	for _, tt := range tests {
		got, err := s.GetAll(tt.pattern)
		if err != nil {
			t.Errorf("GetAll(%q): %v", tt.pattern, err)
			continue
		}
		if got == nil {
			t.Errorf("GetAll(%q) = nil, want a non-nil slice", tt.pattern)
		}
		if !slices.Equal(keysOf(got), tt.want) {
			t.Errorf("GetAll(%q) = %q, want %q", tt.pattern, keysOf(got), tt.want)
		}
	}
}

func TestStoreBadPattern(t *testing.T) {
	for _, s := range []*Store{sample(), NewStore(nil), nil} {
		for _, pattern := range []string{"/app/[", "/zzz/[", `/app/\`} {
			if _, err := s.GetAll(pattern); err == nil {
				t.Errorf("GetAll(%q) on a %d-key store: no error", pattern, s.Len())
			}
			if _, err := s.GetAllValues(pattern); err == nil {
				t.Errorf("GetAllValues(%q) on a %d-key store: no error", pattern, s.Len())
			}
		}
	}
}

func TestStoreGetAllValuesSortsByValue(t *testing.T) {
	got, err := sample().GetAllValues("/app/upstream/*")
	if err != nil {
		t.Fatal(err)
	}
	// Key order would be app1, app10, app2 = .100, .1, .101.
	want := []string{"10.0.1.100:80", "10.0.1.101:80", "10.0.1.1:80"}
	if !slices.Equal(got, want) {
		t.Errorf("GetAllValues = %q, want %q (sorted by value)", got, want)
	}
	none, err := sample().GetAllValues("/nope/*")
	if err != nil || none == nil || len(none) != 0 {
		t.Errorf("GetAllValues on no match = %#v, %v; want an empty slice", none, err)
	}
}

func TestStoreList(t *testing.T) {
	s := sample()
	tests := []struct {
		dir       string
		ls, lsdir []string
	}{
		{"/app", []string{"empty", "name", "upstream"}, []string{"upstream"}},
		{"/app/", []string{"empty", "name", "upstream"}, []string{"upstream"}},
		{"//app/./", []string{"empty", "name", "upstream"}, []string{"upstream"}},
		{"/ap", []string{}, []string{}}, // whole segments only
		{"/nginx", []string{"deep", "port"}, []string{"deep"}},
		{"/nginx/deep", []string{"a"}, []string{"a"}},
		{"/pools", []string{"eqiad"}, []string{"eqiad"}},
		// The root lists the top level (memkv listed only root leaves for ls
		// and nothing for lsdir).
		{"/", []string{"app", "apple", "nginx", "pools", "services", "top"}, []string{"app", "apple", "nginx", "pools", "services"}},
		// A key equal to the path lists its own name, as in memkv, but only
		// when written exactly as the key.
		{"/app/name", []string{"name"}, []string{}},
		{"/app/name/", []string{}, []string{}},
		{"/top", []string{"top"}, []string{}},
		{"/nope", []string{}, []string{}},
		{"app", []string{}, []string{}}, // keys are absolute
		{"", []string{}, []string{}},
	}
	for _, tt := range tests {
		if got := s.List(tt.dir); got == nil || !slices.Equal(got, tt.ls) {
			t.Errorf("List(%q) = %#v, want %q", tt.dir, got, tt.ls)
		}
		if got := s.ListDir(tt.dir); got == nil || !slices.Equal(got, tt.lsdir) {
			t.Errorf("ListDir(%q) = %#v, want %q", tt.dir, got, tt.lsdir)
		}
	}
}

// Results are the caller's to modify: changing one must not change the
// store or a later result.
func TestStoreResultsAreFresh(t *testing.T) {
	s := sample()
	ls := s.List("/app")
	ls[0] = "clobbered"
	pairs, _ := s.GetAll("/app/*")
	pairs[0].Value = "clobbered"
	values, _ := s.GetAllValues("/app/upstream/*")
	values[0] = "clobbered"
	if got := s.List("/app"); got[0] != "empty" {
		t.Errorf("List after modifying an earlier result = %q", got)
	}
	if v, _ := s.GetValue("/app/empty"); v != "" {
		t.Errorf("GetValue after modifying a gets result = %q", v)
	}
	if got, _ := s.GetAllValues("/app/upstream/*"); got[0] != "10.0.1.100:80" {
		t.Errorf("GetAllValues after modifying an earlier result = %q", got)
	}
}

func TestStoreCopiesInput(t *testing.T) {
	in := map[string]string{"/a": "1"}
	s := NewStore(in)
	in["/a"] = "2"
	in["/b"] = "3"
	if v, _ := s.GetValue("/a"); v != "1" || s.Exists("/b") || s.Len() != 1 {
		t.Errorf("store changed with its input map: /a=%q, /b exists %v, len %d", v, s.Exists("/b"), s.Len())
	}
}

func TestNilStoreIsEmpty(t *testing.T) {
	var s *Store
	if s.Len() != 0 || s.Exists("/a") || len(s.List("/")) != 0 || len(s.ListDir("/")) != 0 {
		t.Error("nil store is not empty")
	}
	if _, err := s.Get("/a"); !errors.Is(err, ErrNotExist) {
		t.Errorf("nil store Get: %v", err)
	}
	if got, err := s.GetAll("/*"); err != nil || got == nil || len(got) != 0 {
		t.Errorf("nil store GetAll = %#v, %v", got, err)
	}
}

// Many goroutines read one store; -race checks there is nothing to lock.
func TestStoreConcurrentReads(t *testing.T) {
	s := sample()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				key := fmt.Sprintf("/app/upstream/app%d", 1+(g+i)%2)
				if _, err := s.Get(key); err != nil {
					t.Error(err)
					return
				}
				l := s.List("/app")
				slices.Reverse(l)
				if p, _ := s.GetAll("/app/upstream/*"); len(p) != 3 {
					t.Errorf("GetAll: %d pairs", len(p))
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestNewStoreFromPairsSortsAndLaterWins(t *testing.T) {
	s := NewStoreFromPairs(KVPairs{{"/b", "1"}, {"/a", "x"}, {"/b", "2"}, {"/a/c", "3"}})
	got, _ := s.GetAll("/*")
	if len(got) != 2 || got[0] != (KVPair{"/a", "x"}) || got[1] != (KVPair{"/b", "2"}) || s.Len() != 3 {
		t.Fatalf("got %v (len %d)", got, s.Len())
	}
}
