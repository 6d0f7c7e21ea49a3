// Package env is confd's env backend: key /database/host reads the
// environment variable DATABASE_HOST, and every variable that extends it
// (DATABASE_HOST_NAME becomes /database/host/name).
package env

import (
	"context"
	"os"
	"strings"
	"time"

	"github.com/confsync/confsync/backends"
)

// Source reads the environment on each fetch.
type Source struct {
	// Environ returns KEY=value pairs; nil means os.Environ.
	Environ func() []string
}

// Fetch returns the variables under root, mapped to keys.
func (s *Source) Fetch(ctx context.Context, root string) (*backends.Snapshot, error) {
	environ := s.Environ
	if environ == nil {
		environ = os.Environ
	}
	root = backends.CleanKey(root)
	prefix := VarName(root)
	var b backends.Builder
	for _, kv := range environ() {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" || !strings.HasPrefix(name, prefix) {
			continue
		}
		key := KeyName(name)
		if backends.Covers(root, key) {
			b.Set(key, value)
		}
	}
	return &backends.Snapshot{Root: root, Tree: b.Tree(), FetchedAt: time.Now()}, nil
}

// VarName maps a key to its variable: /database/host → DATABASE_HOST.
func VarName(key string) string {
	return strings.ToUpper(strings.ReplaceAll(strings.Trim(key, "/"), "/", "_"))
}

// KeyName maps a variable back to a key: DATABASE_HOST → /database/host.
// The mapping is lossy for names holding "_", as in confd.
func KeyName(name string) string {
	return "/" + strings.ToLower(strings.ReplaceAll(name, "_", "/"))
}
