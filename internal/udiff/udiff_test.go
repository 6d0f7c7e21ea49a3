package udiff

import (
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPatchAppliesOurDiff feeds random diffs to patch(1): each must apply
// cleanly and give exactly the new text, missing final newlines included.
func TestPatchAppliesOurDiff(t *testing.T) {
	if _, err := exec.LookPath("patch"); err != nil {
		t.Fatalf("patch(1) is needed for this test: %v", err)
	}
	rng := rand.New(rand.NewSource(3))
	words := []string{"a\n", "b\n", "c\n", "d\n", "e\n", "f\n"}
	dir := t.TempDir()
	for i := 0; i < 300; i++ {
		a := randomText(rng, words)
		b := randomText(rng, words)
		if rng.Intn(4) == 0 {
			b = strings.TrimSuffix(b, "\n")
		}
		pa, pb := filepath.Join(dir, "a"), filepath.Join(dir, "b")
		os.WriteFile(pa, []byte(a), 0o644)
		os.WriteFile(pb, []byte(b), 0o644)
		got := Diff("a", "b", []byte(a), []byte(b), 3)
		if got == "" {
			if a != b {
				t.Fatalf("no diff for different texts %q %q", a, b)
			}
			continue
		}
		// Applying our diff with patch must give b exactly.
		patchFile := filepath.Join(dir, "p")
		os.WriteFile(patchFile, []byte(got), 0o644)
		out := filepath.Join(dir, "out")
		cmd := exec.Command("patch", "-s", "-o", out, pa, patchFile)
		if msg, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("patch rejected our diff of %q -> %q:\n%s\n%s", a, b, got, msg)
		}
		res, _ := os.ReadFile(out)
		if string(res) != b {
			t.Fatalf("patched %q, want %q; diff:\n%s", res, b, got)
		}
	}
}

func TestEqualIsEmpty(t *testing.T) {
	if d := Diff("a", "b", []byte("x\n"), []byte("x\n"), 3); d != "" {
		t.Fatalf("diff of equal texts: %q", d)
	}
}

func TestShape(t *testing.T) {
	got := Diff("old", "new", []byte("1\n2\n3\n"), []byte("1\nTWO\n3\n"), 3)
	want := "--- old\n+++ new\n@@ -1,3 +1,3 @@\n 1\n-2\n+TWO\n 3\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func randomText(rng *rand.Rand, words []string) string {
	var b strings.Builder
	for n := rng.Intn(30); n > 0; n-- {
		b.WriteString(words[rng.Intn(len(words))])
	}
	return b.String()
}
