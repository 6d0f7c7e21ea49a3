package main

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// unitFile is a systemd unit's settings, in order, continuation lines
// joined.
type unitFile map[string][]string

func readUnit(t *testing.T, path string) unitFile {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unitFile{}
	text := strings.ReplaceAll(string(raw), "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: not a setting: %q", path, line)
		}
		u[k] = append(u[k], strings.Join(strings.Fields(v), " "))
	}
	return u
}

func (u unitFile) get(key string) string {
	if v := u[key]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

// environment is what the unit's Environment= lines set (values without
// spaces, as ours are).
func (u unitFile) environment() map[string]string {
	env := map[string]string{}
	for _, line := range u["Environment"] {
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(strings.Trim(kv, `"`), "=")
			env[k] = v
		}
	}
	return env
}

var unitVarRE = regexp.MustCompile(`^\$\{?([A-Z_]+)\}?$`)

// TestUnitsRunRealFlags: every unit in deploy/ is a notify service with a
// watchdog, and its ExecStart, with the unit's default settings, parses
// with its command's real flag set: a unit cannot pass a flag the binary
// does not have, or a value it would refuse.
func TestUnitsRunRealFlags(t *testing.T) {
	units, _ := filepath.Glob(filepath.Join("..", "..", "deploy", "*.service"))
	if len(units) == 0 {
		t.Fatal("no units in deploy/")
	}
	for _, path := range units {
		name := filepath.Base(path)
		u := readUnit(t, path)
		for key, want := range map[string]string{"Type": "notify", "NotifyAccess": "main", "Restart": "on-failure"} {
			if got := u.get(key); got != want {
				t.Errorf("%s: %s=%s, want %s", name, key, got, want)
			}
		}
		if u.get("WatchdogSec") == "" {
			t.Errorf("%s has no WatchdogSec", name)
		}
		if strings.Contains(u.get("RestartPreventExitStatus"), "2") && u.environment()["GOTRACEBACK"] != "crash" {
			t.Errorf("%s: a watchdog abort exits 2 unless GOTRACEBACK=crash, and RestartPreventExitStatus=2 would keep it down", name)
		}
		words := strings.Fields(u.get("ExecStart"))
		if len(words) < 2 || words[0] != "/usr/bin/confsync" {
			t.Errorf("%s: ExecStart=%s does not run /usr/bin/confsync", name, u.get("ExecStart"))
			continue
		}
		if want := "confsync-" + words[1] + ".service"; name != want {
			t.Errorf("%s runs confsync %s; name it %s", name, words[1], want)
		}
		c, ok := lookup(words[1])
		if !ok {
			t.Errorf("%s runs `confsync %s`, which is not in the command table", name, words[1])
			continue
		}
		env := u.environment()
		var args []string
		for _, w := range words[2:] {
			m := unitVarRE.FindStringSubmatch(w)
			switch {
			case m == nil:
				args = append(args, w)
			case strings.HasPrefix(w, "${"):
				v, ok := env[m[1]]
				if !ok {
					t.Errorf("%s: %s has no default in Environment=", name, w)
				}
				args = append(args, v)
			default: // $VAR: optional words from /etc/default, empty by default
			}
		}
		fs := c.flags()
		fs.SetOutput(io.Discard)
		if err := fs.Parse(args); err != nil {
			t.Errorf("%s: confsync %s %s: %v", name, c.name, strings.Join(args, " "), err)
		} else if fs.NArg() > 0 {
			t.Errorf("%s: unexpected arguments %v", name, fs.Args())
		}
		if doc := "man:confsync-" + c.name + "(1)"; !strings.Contains(u.get("Documentation"), doc) {
			t.Errorf("%s: Documentation= lacks %s", name, doc)
		}
	}
}

var assignmentRE = regexp.MustCompile(`(?m)^#?([A-Z][A-Z0-9_]*)=`)

// TestDefaultFilesSetWhatUnitsRead: every variable an /etc/default file
// shows (set or commented out) is one its unit reads, or, for the agent,
// a CONFSYNC_<FLAG> of one of the agent's flags.
func TestDefaultFilesSetWhatUnitsRead(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("..", "..", "deploy", "default", "confsync-*"))
	if len(files) == 0 {
		t.Fatal("no files in deploy/default/")
	}
	agentFlags := commandFlags("agent")
	for _, path := range files {
		name := filepath.Base(path)
		unitPath := filepath.Join("..", "..", "deploy", name+".service")
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		u := readUnit(t, unitPath)
		if !slices.Contains(u["EnvironmentFile"], "-/etc/default/"+name) {
			t.Errorf("%s.service does not read /etc/default/%s", name, name)
		}
		exec := u.get("ExecStart")
		for _, m := range assignmentRE.FindAllStringSubmatch(string(raw), -1) {
			v := m[1]
			if strings.Contains(exec, "${"+v+"}") || slices.Contains(strings.Fields(exec), "$"+v) {
				continue
			}
			if flagName, ok := strings.CutPrefix(v, "CONFSYNC_"); ok && name == "confsync-agent" &&
				agentFlags[strings.ReplaceAll(strings.ToLower(flagName), "_", "-")] {
				continue
			}
			t.Errorf("deploy/default/%s sets %s, which nothing reads", name, v)
		}
	}
}
