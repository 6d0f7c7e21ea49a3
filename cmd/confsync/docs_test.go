package main

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

var docFlagRE = regexp.MustCompile("`(--?[a-z][a-z0-9-]*)`")

// docFlags returns the flags a manual's "## Flags" section lists in its
// table, without their dashes.
func docFlags(t *testing.T, page string) map[string]bool {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "docs", page))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(raw), "\n## Flags\n")
	if !ok {
		t.Fatalf("docs/%s has no ## Flags section", page)
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	flags := map[string]bool{}
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `-") {
			continue
		}
		cell := strings.Split(line, "|")[1]
		for _, m := range docFlagRE.FindAllStringSubmatch(cell, -1) {
			flags[strings.TrimLeft(m[1], "-")] = true
		}
	}
	return flags
}

func commandFlags(name string) map[string]bool {
	c, _ := lookup(name)
	flags := map[string]bool{}
	fs := c.flags()
	fs.VisitAll(func(f *flag.Flag) { flags[f.Name] = true })
	return flags
}

// TestDocsMatchTheFlags: every manual lists exactly the flags its command
// has, so the docs cannot drift from the binary.
func TestDocsMatchTheFlags(t *testing.T) {
	render := docFlags(t, "render.md")
	pages := map[string][]map[string]bool{
		"render": {render},
		"agent":  {render, docFlags(t, "agent.md")},
		"check":  {docFlags(t, "check.md")},
		"mirror": {docFlags(t, "mirror.md")},
		"gate":   {docFlags(t, "gate.md")},
		"demo":   {docFlags(t, "demo.md")},
		"status": {docFlags(t, "status.md")},
		"relay":  {docFlags(t, "relay.md")},
	}
	for _, c := range commands() {
		docs, ok := pages[c.name]
		if !ok {
			t.Errorf("command %s has no manual in docs/", c.name)
			continue
		}
		documented := map[string]bool{}
		for _, d := range docs {
			for f := range d {
				documented[f] = true
			}
		}
		have := commandFlags(c.name)
		if c.name == "agent" {
			// The single-template flags are listed with render's but
			// refused by the agent.
			delete(documented, "template")
			delete(documented, "key")
			delete(have, "template")
			delete(have, "key")
		}
		if missing := diff(have, documented); len(missing) > 0 {
			t.Errorf("docs for %s lack flags %v", c.name, missing)
		}
		if extra := diff(documented, have); len(extra) > 0 {
			t.Errorf("docs for %s list flags %s does not have: %v", c.name, c.name, extra)
		}
	}
}

// TestHelpShowsEveryFlag: `confsync help <cmd>` is the man page, flags
// included.
func TestHelpShowsEveryFlag(t *testing.T) {
	for _, c := range commands() {
		res := runCmd(t, "help", c.name)
		if res.code != 0 {
			t.Fatalf("help %s: exit %d", c.name, res.code)
		}
		for f := range commandFlags(c.name) {
			if !strings.Contains(res.stdout, "-"+f) {
				t.Errorf("help %s does not show -%s", c.name, f)
			}
		}
		for _, section := range []string{"NAME", "SYNOPSIS", "DESCRIPTION", "FLAGS"} {
			if !strings.Contains(res.stdout, section) {
				t.Errorf("help %s lacks %s", c.name, section)
			}
		}
	}
	if res := runCmd(t, "-version"); res.code != 0 || !strings.HasPrefix(res.stdout, "confsync ") {
		t.Fatalf("-version: %d %q", res.code, res.stdout)
	}
}

func diff(a, b map[string]bool) []string {
	var out []string
	for k := range a {
		if !b[k] {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}
