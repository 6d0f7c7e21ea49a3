package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Manual pages, in man(7) troff, made from the same parts as
// `confsync help`: the command's summary, synopsis and description, and
// its flag set as flag.PrintDefaults prints it. Nothing is written twice,
// so a page cannot drift from the binary it describes; man_test.go checks
// that man(1) shows the same words as `confsync help`.

// manSection is where every page goes: user commands.
const manSection = "1"

// manName is the page name of a command: confsync-agent.
func manName(c command) string { return "confsync-" + c.name }

// writeManPages writes confsync.1 and one page per command into dir, for
// packaging (scripts/deb.sh).
func writeManPages(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pages := map[string]string{"confsync": overviewManPage()}
	for _, c := range commands() {
		pages[manName(c)] = manPage(c)
	}
	for name, text := range pages {
		p := filepath.Join(dir, name+"."+manSection)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			return fmt.Errorf("write manual page: %w", err)
		}
	}
	return nil
}

// manPage is confsync-<command>(1).
func manPage(c command) string {
	var m troff
	m.header(manName(c))
	m.section("NAME")
	m.line(roff(manName(c)) + ` \- ` + roff(c.summary))
	m.section("SYNOPSIS")
	m.synopsis(strings.Split(strings.TrimSpace(c.synopsis), "\n"), "confsync "+c.name)
	m.section("DESCRIPTION")
	m.text(c.description)
	m.section("FLAGS")
	for _, f := range parseDefaults(flagDefaults(c)) {
		m.flag(f)
	}
	m.section("SEE ALSO")
	m.line(`\fBconfsync\fR(1); ` + roff("/usr/share/doc/confsync/"+c.name+".md") +
		`, the full manual with migration notes (docs/` + roff(c.name) + `.md in the source).`)
	return m.String()
}

// overviewManPage is confsync(1): what `confsync help` prints, with a
// pointer to every command's page.
func overviewManPage() string {
	var m troff
	m.header("confsync")
	m.section("NAME")
	m.line(`confsync \- ` + roff(overviewSummary))
	m.section("SYNOPSIS")
	m.synopsis([]string{overviewUsage}, "confsync")
	m.section("DESCRIPTION")
	m.text(overviewIntro)
	m.section("COMMANDS")
	m.tagIndent = "12" // wide enough for "completion"
	var refs []string
	for _, c := range commands() {
		m.tagged(`\fB`+roff(c.name)+`\fR`, roff(c.summary)+`; see \fB`+roff(manName(c))+`\fR(1).`)
		refs = append(refs, `\fB`+roff(manName(c))+`\fR(1)`)
	}
	for _, c := range builtins() {
		m.tagged(`\fB`+roff(c.name)+`\fR`, roff(c.summary))
	}
	m.section("EXIT STATUS")
	m.text(overviewFooter)
	m.section("FILES")
	m.tagged(`\fI/usr/share/doc/confsync/\fR`, "manuals in Markdown, and examples/: a ready confdir, the gate's ACL and Prometheus alerts")
	m.tagged(`\fI/lib/systemd/system/confsync\-*.service\fR`, "the daemons' units (installed disabled)")
	m.section("SEE ALSO")
	m.line(strings.Join(refs, ", "))
	return m.String()
}

// troff builds a page in the man(7) macros.
type troff struct {
	strings.Builder
	tagIndent string
}

// header opens the page. The date is the source's (SOURCE_DATE_EPOCH, or
// the commit time), never the build's, so that rebuilding the package
// from the same commit gives the same page.
func (m *troff) header(name string) {
	b := readBuildInfo()
	fmt.Fprintf(m, ".TH %s %s %s %s %s\n", quoteArg(strings.ToUpper(name)), manSection,
		quoteArg(manDate(b)), quoteArg("confsync "+b.Version), quoteArg("confsync manual"))
	// Flags and paths are long words: no hyphenation, ragged right.
	m.WriteString(".nh\n.ad l\n")
}

func manDate(b buildInfo) string {
	if s, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64); err == nil {
		return time.Unix(s, 0).UTC().Format(time.DateOnly)
	}
	if t, err := time.Parse(time.RFC3339, b.Time); err == nil {
		return t.UTC().Format(time.DateOnly)
	}
	return ""
}

func (m *troff) section(name string) { fmt.Fprintf(m, ".SH %s\n", quoteArg(name)) }

// line writes troff text that is already escaped.
func (m *troff) line(s string) { m.WriteString(s + "\n") }

// synopsis writes lines as they are, with the command name in bold.
func (m *troff) synopsis(lines []string, command string) {
	m.WriteString(".nf\n")
	for _, l := range lines {
		if rest, ok := strings.CutPrefix(l, command); ok {
			m.line(`\fB` + roff(command) + `\fR` + roff(rest))
			continue
		}
		m.line(roff(l))
	}
	m.WriteString(".fi\n")
}

// text writes a description: paragraphs separated by blank lines, filled;
// indented lines (examples, tables, file layouts) kept as they are.
func (m *troff) text(s string) {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	m.WriteString(".PP\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		switch {
		case strings.TrimSpace(l) == "":
			m.WriteString(".PP\n")
		case l[0] == ' ' || l[0] == '\t':
			j := i
			for j < len(lines) && lines[j] != "" && (lines[j][0] == ' ' || lines[j][0] == '\t') {
				j++
			}
			m.preformatted(lines[i:j])
			i = j - 1
		default:
			m.line(roff(l))
		}
	}
}

// preformatted writes lines unfilled, indented, keeping their relative
// indentation.
func (m *troff) preformatted(lines []string) {
	indent := -1
	for _, l := range lines {
		n := len(l) - len(strings.TrimLeft(l, " \t"))
		if indent < 0 || n < indent {
			indent = n
		}
	}
	m.WriteString(".RS 4\n.nf\n")
	for _, l := range lines {
		m.line(roff(l[indent:]))
	}
	m.WriteString(".fi\n.RE\n")
}

// tagged writes an indented paragraph under a tag. The first one after
// tagIndent is set sets the indentation of the following ones, as .TP does.
func (m *troff) tagged(tag, body string) {
	m.WriteString(".TP")
	if m.tagIndent != "" {
		m.WriteString(" " + m.tagIndent)
		m.tagIndent = ""
	}
	m.WriteString("\n" + tag + "\n" + body + "\n")
}

func (m *troff) flag(f flagDoc) {
	tag := `\fB\-` + roff(f.name) + `\fR`
	if f.arg != "" {
		tag += ` \fI` + roff(f.arg) + `\fR`
	}
	m.WriteString(".TP\n" + tag + "\n")
	for i, l := range strings.Split(f.usage, "\n") {
		if i > 0 {
			m.WriteString(".br\n")
		}
		m.line(roff(l))
	}
}

// roff escapes text for a troff text line: backslashes, minus signs (so
// that flags copied from the page work), and a leading control character.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// quoteArg makes s one macro argument.
func quoteArg(s string) string {
	return `"` + strings.ReplaceAll(roff(s), `"`, `\(dq`) + `"`
}

// flagDoc is one flag as flag.PrintDefaults shows it.
type flagDoc struct {
	name  string
	arg   string // the value's name, empty for a boolean
	usage string // with the default, as PrintDefaults appends it
}

// parseDefaults reads flag.PrintDefaults output back into flags:
//
//	-name arg
//	  	usage (default "x")
//	-x	usage of a one-letter boolean
func parseDefaults(text string) []flagDoc {
	var flags []flagDoc
	for _, l := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(l, "  -"):
			head, usage, _ := strings.Cut(l[3:], "\t")
			name, arg, _ := strings.Cut(head, " ")
			flags = append(flags, flagDoc{name: name, arg: arg, usage: usage})
		case strings.HasPrefix(l, "    \t") && len(flags) > 0:
			f := &flags[len(flags)-1]
			if f.usage != "" {
				f.usage += "\n"
			}
			f.usage += l[len("    \t"):]
		}
	}
	return flags
}
