package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// manCommand renders a page file with man(1) as a reader would see it,
// plain text wide enough that no line breaks a word, and groff's warnings
// (lintian's check) on stderr.
func manCommand(t *testing.T, page string) (text, warnings string) {
	t.Helper()
	if _, err := exec.LookPath("man"); err != nil {
		t.Skip("man(1) is not installed (apt-get install man-db); the troff checks without it still ran")
	}
	cmd := exec.Command("man", "--warnings", "-E", "UTF-8", "-l", page)
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8", "MANWIDTH=1000", "MAN_KEEP_FORMATTING=", "MANPAGER=cat", "PAGER=cat")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("man -l %s: %v\n%s", page, err, stderr.String())
	}
	return stdout.String(), stderr.String()
}

// sections splits rendered text (help or man) into its sections: a
// heading is a line that starts in column 0, the body is every indented
// line up to the next heading, as words.
func sections(text string) map[string][]string {
	out := map[string][]string{}
	var heading string
	for _, line := range strings.Split(text, "\n") {
		if line != "" && line[0] != ' ' {
			heading = strings.TrimSpace(line)
			continue
		}
		out[heading] = append(out[heading], strings.Fields(line)...)
	}
	return out
}

// firstDifference shows where two word sequences part, or "" when equal.
func firstDifference(man, help []string) string {
	i := 0
	for i < len(man) && i < len(help) && man[i] == help[i] {
		i++
	}
	if i == len(man) && i == len(help) {
		return ""
	}
	around := func(w []string) string {
		return strings.Join(w[max(0, i-5):min(len(w), i+8)], " ")
	}
	return fmt.Sprintf("at word %d:\n  man:  ...%s...\n  help: ...%s...", i, around(man), around(help))
}

func writePages(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if res := runCmd(t, "help", "-man-dir", dir); res.code != 0 {
		t.Fatalf("help -man-dir: exit %d: %s", res.code, res.stderr)
	}
	return dir
}

// TestManPagesSayWhatHelpSays: every command in the table has a page, and
// man(1) shows exactly the words `confsync help <command>` prints in its
// SYNOPSIS, DESCRIPTION and FLAGS, without a groff warning. A command added
// to the table gets its page; a page cannot drift from the flags.
func TestManPagesSayWhatHelpSays(t *testing.T) {
	dir := writePages(t)
	for _, c := range commands() {
		page := filepath.Join(dir, "confsync-"+c.name+".1")
		raw, err := os.ReadFile(page)
		if err != nil {
			t.Errorf("no manual page for %s: %v", c.name, err)
			continue
		}
		checkTroff(t, c, string(raw))
		text, warnings := manCommand(t, page)
		if warnings != "" {
			t.Errorf("man confsync-%s warns:\n%s", c.name, warnings)
		}
		help := sections(commandHelp(c.name))
		man := sections(text)
		for _, s := range []string{"SYNOPSIS", "DESCRIPTION", "FLAGS"} {
			if d := firstDifference(man[s], help[s]); d != "" {
				t.Errorf("man confsync-%s: %s differs from confsync help %s (both are made from the command table, so man.go renders something wrongly) %s", c.name, s, c.name, d)
			}
		}
		if name := strings.Join(man["NAME"], " "); name != "confsync-"+c.name+" - "+strings.Join(strings.Fields(c.summary), " ") {
			t.Errorf("man confsync-%s: NAME is %q (whatis(1) reads it)", c.name, name)
		}
	}
}

// checkTroff checks the page source without man(1): every flag has its
// tag, the title names the page, and no line would be read as a request
// by accident.
func checkTroff(t *testing.T, c command, page string) {
	t.Helper()
	if !strings.HasPrefix(page, `.TH "CONFSYNC\-`+strings.ToUpper(c.name)+`" 1 `) {
		t.Errorf("confsync-%s.1 starts %q", c.name, strings.SplitN(page, "\n", 2)[0])
	}
	c.flags().VisitAll(func(f *flag.Flag) {
		if !strings.Contains(page, "\n"+`\fB\-`+strings.ReplaceAll(f.Name, "-", `\-`)+`\fR`) {
			t.Errorf("confsync-%s.1 lacks flag -%s", c.name, f.Name)
		}
	})
	known := map[string]bool{".TH": true, ".SH": true, ".PP": true, ".TP": true, ".RS": true, ".RE": true,
		".nf": true, ".fi": true, ".br": true, ".nh": true, ".ad": true}
	for _, line := range strings.Split(page, "\n") {
		if strings.HasPrefix(line, ".") || strings.HasPrefix(line, "'") {
			if req, _, _ := strings.Cut(line, " "); !known[req] {
				t.Errorf("confsync-%s.1: unexpected request line %q", c.name, line)
			}
		}
	}
}

// confsync(1) names every command and its page, and the built-in ones.
func TestOverviewManPageListsEveryCommand(t *testing.T) {
	dir := writePages(t)
	var want []string
	for _, c := range commands() {
		want = append(want, c.name, "confsync-"+c.name+".1")
	}
	entries, _ := os.ReadDir(dir)
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if len(got) != len(commands())+1 {
		t.Errorf("pages %v, want confsync.1 and one per command", got)
	}
	text, warnings := manCommand(t, filepath.Join(dir, "confsync.1"))
	if warnings != "" {
		t.Errorf("man confsync warns:\n%s", warnings)
	}
	commandsSection := strings.Join(sections(text)["COMMANDS"], " ")
	for _, c := range commands() {
		entry := c.name + " " + strings.Join(strings.Fields(c.summary), " ") + "; see confsync-" + c.name + "(1)."
		if !strings.Contains(commandsSection, entry) {
			t.Errorf("confsync(1) lacks %q", entry)
		}
	}
	for _, b := range builtins() {
		if !strings.Contains(commandsSection, b.name+" "+b.summary) {
			t.Errorf("confsync(1) lacks %s", b.name)
		}
	}
	if !strings.Contains(strings.Join(strings.Fields(text), " "), strings.Join(strings.Fields(overviewFooter), " ")) {
		t.Error("confsync(1) lacks the exit codes")
	}
}

// `confsync help -man X` is the page -man-dir writes; unknown commands and
// stray arguments are usage errors.
func TestHelpMan(t *testing.T) {
	dir := writePages(t)
	for _, name := range []string{"", "agent"} {
		args := []string{"help", "-man"}
		file := "confsync.1"
		if name != "" {
			args = append(args, name)
			file = "confsync-" + name + ".1"
		}
		res := runCmd(t, args...)
		if want, _ := os.ReadFile(filepath.Join(dir, file)); res.code != 0 || res.stdout != string(want) {
			t.Errorf("%v: exit %d, output differs from %s", args, res.code, file)
		}
	}
	for _, args := range [][]string{{"help", "-man", "nosuch"}, {"help", "agent", "render"}, {"help", "-man-dir", dir, "agent"}, {"help", "-bogus"}} {
		if res := runCmd(t, args...); res.code != 2 {
			t.Errorf("%v: exit %d, want 2", args, res.code)
		}
	}
}

// Text that troff would take for markup is escaped.
func TestRoffEscapes(t *testing.T) {
	for in, want := range map[string]string{
		`.toml files`:    `\&.toml files`,
		`'quoted' start`: `\&'quoted' start`,
		`C:\dir -x`:      `C:\edir \-x`,
	} {
		if got := roff(in); got != want {
			t.Errorf("roff(%q) = %q, want %q", in, got, want)
		}
	}
}

// parseDefaults reads back every flag PrintDefaults prints, one-letter
// booleans and multi-line usage included.
func TestParseDefaults(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Bool("v", false, "verbose")
	fs.String("out", "o", "output `dir`\nsecond line")
	fs.Duration("wait", 0, "how long")
	var b strings.Builder
	fs.SetOutput(&b)
	fs.PrintDefaults()
	got := parseDefaults(b.String())
	sort.Slice(got, func(i, j int) bool { return got[i].name < got[j].name })
	want := []flagDoc{
		{"out", "dir", "output dir\nsecond line (default \"o\")"},
		{"v", "", "verbose"},
		{"wait", "duration", "how long"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("got %+v, want %+v", got[i], want[i])
		}
	}
}
