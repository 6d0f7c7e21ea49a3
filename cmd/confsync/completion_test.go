package main

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// complete runs the generated script in bash the way readline would for
// the words typed so far (the last one being completed) and returns the
// candidates.
func complete(t *testing.T, script string, words ...string) []string {
	t.Helper()
	quoted := make([]string, len(words))
	for i, w := range words {
		quoted[i] = strconv.Quote(w)
	}
	prog := "source " + strconv.Quote(script) + "\nCOMP_WORDS=(" + strings.Join(quoted, " ") + ")\n" +
		"COMP_CWORD=" + strconv.Itoa(len(words)-1) + "\n_confsync\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
	cmd := exec.Command("bash", "--norc", "--noprofile", "-c", prog)
	cmd.Dir = filepath.Dir(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	return strings.Fields(string(out))
}

// TestBashCompletion: the script completes every command of the table,
// every flag of each (one dash, or two), and file names after a flag that
// takes a value.
func TestBashCompletion(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	res := runCmd(t, "completion", "bash")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "confsync")
	os.WriteFile(script, []byte(res.stdout), 0o644)
	os.WriteFile(filepath.Join(dir, "acl.toml"), nil, 0o644)

	all := complete(t, script, "confsync", "")
	for _, c := range commands() {
		if !slices.Contains(all, c.name) {
			t.Errorf("command %s does not complete: %v", c.name, all)
		}
	}
	for _, b := range []string{"help", "version", "completion"} {
		if !slices.Contains(all, b) {
			t.Errorf("%s does not complete", b)
		}
	}
	if got := complete(t, script, "confsync", "ag"); !slices.Equal(got, []string{"agent"}) {
		t.Errorf("ag completes to %v", got)
	}
	for _, c := range commands() {
		flags := complete(t, script, "confsync", c.name, "-")
		doubled := complete(t, script, "confsync", c.name, "--")
		c.flags().VisitAll(func(f *flag.Flag) {
			if !slices.Contains(flags, "-"+f.Name) || !slices.Contains(doubled, "--"+f.Name) {
				t.Errorf("%s -%s does not complete", c.name, f.Name)
			}
		})
		if len(flags) != len(commandFlags(c.name)) {
			t.Errorf("%s: %d flags complete, the command has %d", c.name, len(flags), len(commandFlags(c.name)))
		}
	}
	if got := complete(t, script, "confsync", "render", "-confdir", "ac"); !slices.Equal(got, []string{"acl.toml"}) {
		t.Errorf("a flag's value completes to %v, want the file", got)
	}
	if got := complete(t, script, "confsync", "help", "mi"); !slices.Equal(got, []string{"mirror"}) {
		t.Errorf("help mi completes to %v", got)
	}
	if res := runCmd(t, "completion", "zsh"); res.code != 2 {
		t.Errorf("completion zsh: exit %d, want 2", res.code)
	}
}
