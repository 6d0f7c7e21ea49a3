package etcd_test

import (
	"strings"
	"testing"

	"github.com/confsync/confsync/backends/etcd"
)

// etcd refuses to change its root (error 107), so an event on it, however
// its key is spelled, is forged or corrupt. Applied, a delete of the root
// would empty every copy of every prefix, and every file rendered from it.
func TestDecodeEventRefusesTheRoot(t *testing.T) {
	for _, key := range []string{"/", "//", "/a/..", "/."} {
		for _, action := range []string{"delete", "expire", "set"} {
			raw := `{"action":"` + action + `","node":{"key":"` + key + `","value":"","modifiedIndex":7}}`
			if ev, err := etcd.DecodeEvent([]byte(raw)); err == nil || !strings.Contains(err.Error(), "root") {
				t.Errorf("%s of %q: %+v, %v; want an error about the root", action, key, ev, err)
			}
		}
	}
	if _, err := etcd.DecodeEvent([]byte(`{"action":"delete","node":{"key":"/a","modifiedIndex":7}}`)); err != nil {
		t.Fatalf("a delete of /a: %v", err)
	}
}
