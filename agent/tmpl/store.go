package tmpl

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
)

// ErrNotExist is returned (wrapped, with the key) by Get and GetValue when a
// key is not in the store.
var ErrNotExist = errors.New("key does not exist")

// KVPair is one key and its value. Templates read .Key and .Value.
type KVPair struct {
	Key   string
	Value string
}

// KVPairs is what gets returns: pairs sorted by key.
type KVPairs []KVPair

// Store is an immutable snapshot of keys and values, read by the key
// functions of a template (get, getv, gets, getvs, ls, lsdir, exists).
//
// It has memkv's semantics (the store confd uses) without its mutex: nothing
// changes a Store after NewStore, so any number of goroutines may read one
// concurrently. To see new data, build a new Store. Every method returns a
// freshly allocated slice, so templates that sort or reverse a result in
// place (reverse, sortByLength) never change the store.
//
// Keys are absolute, clean slash-separated paths such as /pools/eqiad/x,
// as every backend produces them.
type Store struct {
	pairs []KVPair // sorted by Key; keys are unique
}

// NewStore builds a Store holding a copy of pairs.
func NewStore(pairs map[string]string) *Store {
	s := &Store{pairs: make([]KVPair, 0, len(pairs))}
	for k, v := range pairs {
		s.pairs = append(s.pairs, KVPair{Key: k, Value: v})
	}
	slices.SortFunc(s.pairs, func(a, b KVPair) int { return strings.Compare(a.Key, b.Key) })
	return s
}

// NewStoreFromPairs builds a Store from pairs, which it takes over (the
// caller must not use the slice afterwards). When a key appears twice, the
// later pair wins. It saves NewStore's map for large views.
func NewStoreFromPairs(pairs KVPairs) *Store {
	slices.SortStableFunc(pairs, func(a, b KVPair) int { return strings.Compare(a.Key, b.Key) })
	out := pairs[:0]
	for i, p := range pairs {
		if i+1 < len(pairs) && pairs[i+1].Key == p.Key {
			continue // a later pair for the same key follows
		}
		out = append(out, p)
	}
	return &Store{pairs: out}
}

// Len reports how many keys the store holds.
func (s *Store) Len() int { return len(s.all()) }

// all lets a nil *Store behave as an empty one.
func (s *Store) all() []KVPair {
	if s == nil {
		return nil
	}
	return s.pairs
}

func (s *Store) lookup(key string) (KVPair, bool) {
	pairs := s.all()
	i, found := slices.BinarySearchFunc(pairs, key, func(kv KVPair, k string) int { return strings.Compare(kv.Key, k) })
	if !found {
		return KVPair{}, false
	}
	return pairs[i], true
}

// withPrefix returns the contiguous run of pairs whose key starts with prefix.
func (s *Store) withPrefix(prefix string) []KVPair {
	pairs := s.all()
	lo := sort.Search(len(pairs), func(i int) bool { return pairs[i].Key >= prefix })
	n := sort.Search(len(pairs)-lo, func(i int) bool { return !strings.HasPrefix(pairs[lo+i].Key, prefix) })
	return pairs[lo : lo+n]
}

// Get returns the pair stored under exactly key (template function get).
// A missing key is an error naming the key: "key does not exist: /k".
func (s *Store) Get(key string) (KVPair, error) {
	kv, ok := s.lookup(key)
	if !ok {
		return KVPair{}, fmt.Errorf("%w: %s", ErrNotExist, key)
	}
	return kv, nil
}

// GetValue returns the value stored under key (template function getv).
// When key is missing it returns the first of defaults if one is given
// (the empty string is a valid default), otherwise the error of Get.
func (s *Store) GetValue(key string, defaults ...string) (string, error) {
	kv, err := s.Get(key)
	if err != nil {
		if len(defaults) > 0 {
			return defaults[0], nil
		}
		return "", err
	}
	return kv.Value, nil
}

// Exists reports whether key itself holds a value (template function exists).
// It is false for a directory: with only /app/b/c stored, /app/b does not
// exist.
func (s *Store) Exists(key string) bool {
	_, ok := s.lookup(key)
	return ok
}

// GetAll returns the pairs whose key matches pattern, sorted by key
// (template function gets). Patterns are path.Match globs over the whole
// key, so * and ? never match a '/': /pools/*/x matches /pools/a/x but not
// /pools/a/b/x. No match gives an empty slice; a malformed pattern is an
// error even when the store is empty.
func (s *Store) GetAll(pattern string) (KVPairs, error) {
	if _, err := path.Match(pattern, ""); err != nil {
		return nil, fmt.Errorf("bad pattern %q: %w", pattern, err)
	}
	// Only keys starting with the pattern's literal head can match.
	head := pattern
	if i := strings.IndexAny(pattern, `*?[\`); i >= 0 {
		head = pattern[:i]
	}
	out := KVPairs{}
	for _, kv := range s.withPrefix(head) {
		if ok, _ := path.Match(pattern, kv.Key); ok {
			out = append(out, kv)
		}
	}
	return out, nil
}

// GetAllValues returns the values of GetAll(pattern) sorted by value, not
// by key (template function getvs). The order is memkv's and templates
// depend on it.
func (s *Store) GetAllValues(pattern string) ([]string, error) {
	pairs, err := s.GetAll(pattern)
	if err != nil {
		return nil, err
	}
	values := make([]string, len(pairs))
	for i, kv := range pairs {
		values[i] = kv.Value
	}
	slices.Sort(values)
	return values, nil
}

// List returns the sorted, unique names of the entries directly under dir,
// files and directories alike (template function ls): with /a/b/c and /a/d
// stored, List("/a") is [b d]. Segments match whole: List("/app") does not
// see /apple. dir is cleaned first, so "/a/" and "/a" list the same
// entries, and List("/") lists the top level. As in memkv, if a key is
// exactly dir (as written), its own base name is listed too, so List on a
// leaf key gives its name and List on the leaf with a trailing slash gives
// nothing.
func (s *Store) List(dir string) []string {
	names := []string{}
	if kv, ok := s.lookup(dir); ok {
		names = append(names, path.Base(kv.Key))
	}
	return s.children(names, dir, false)
}

// ListDir is List restricted to entries that have entries below them
// (template function lsdir): with /a/b/c and /a/d stored, ListDir("/a") is
// [b].
func (s *Store) ListDir(dir string) []string {
	return s.children([]string{}, dir, true)
}

func (s *Store) children(names []string, dir string, dirsOnly bool) []string {
	prefix := path.Clean(dir)
	if prefix != "/" {
		prefix += "/"
	}
	for _, kv := range s.withPrefix(prefix) {
		name, _, isDir := strings.Cut(kv.Key[len(prefix):], "/")
		if name == "" || (dirsOnly && !isDir) {
			continue
		}
		if n := len(names); n > 0 && names[n-1] == name {
			continue // the common case: siblings under one child are adjacent
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return slices.Compact(names)
}
