package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The production binary carries no etcd server; only the demo build does.
func TestProductionBinaryLeavesTheEtcdServerOut(t *testing.T) {
	deps := func(tags ...string) string {
		args := append([]string{"list", "-deps"}, tags...)
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v\n%s", err, out)
		}
		return string(out)
	}
	if prod := deps(); strings.Contains(prod, "go.etcd.io/etcd/server") || strings.Contains(prod, "internal/demo") {
		t.Fatal("the production binary links the embedded etcd server or the demo")
	}
	if withDemo := deps("-tags", "demo"); !strings.Contains(withDemo, "go.etcd.io/etcd/server/v3/embed") {
		t.Fatal("the demo build does not link the embedded etcd server")
	}
}
