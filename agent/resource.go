// Package agent turns confd resources into files: it loads conf.d/*.toml
// exactly as confd reads them (strictly), builds each resource's view of the
// keys it asked for, renders its template, writes the result safely and runs
// its check and reload commands. The one-shot render and the watching daemon
// are both built from these pieces.
package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/confsync/confsync/agent/tmpl"
	"github.com/confsync/confsync/backends"
)

// DefaultCommandTimeout bounds check and reload commands unless a resource
// says otherwise. confd has no bound at all, and a hung reload wedges it.
const DefaultCommandTimeout = 60 * time.Second

// Resource is one loaded conf.d file: where its template comes from, which
// keys it reads, and how its output is written and activated.
type Resource struct {
	// Name is the resource file's base name, e.g. _etc_dsh_group_x.toml. It
	// labels metrics, as the site's confd_resource_healthy{name} does.
	Name string
	// File is the resource file's path.
	File string
	// Src is the template's path; Dest is the output file.
	Src, Dest string
	// Prefix is the effective prefix (the global -prefix wins over the
	// resource's own, as in confd 0.16). Keys are as written in the file;
	// PrefixedKeys are the etcd keys they stand for.
	Prefix       string
	Keys         []string
	PrefixedKeys []string
	// Mode is 0 when unset (keep the existing file's mode, else 0644).
	Mode fs.FileMode
	// UID and GID are -1 when unset (keep the existing owner).
	UID, GID int
	// CheckCmd and ReloadCmd are templates over {{.src}} (the stage file) and
	// {{.dest}}; nil when not set.
	CheckCmd, ReloadCmd         *template.Template
	CheckTimeout, ReloadTimeout time.Duration
	checkCmdText, reloadCmdText string
	// WaitMin and WaitMax override the daemon's quiescence for this
	// resource when WaitSet is true.
	WaitMin, WaitMax time.Duration
	WaitSet          bool
	// MakeDirs creates the destination's missing parent directories (set
	// by LoadOptions.DestRoot).
	MakeDirs bool

	Template *tmpl.Template
	sweep    sync.Once
}

// LoadOptions say where resources live and how to read them.
type LoadOptions struct {
	// ConfDir holds conf.d/ and templates/.
	ConfDir string
	// Prefix, when set, replaces every resource's own prefix.
	Prefix string
	// TemplateEnv is handed to every template.
	TemplateEnv tmpl.Env
	// DestRoot, when set, is prepended to every destination, and missing
	// directories under it are created: a way to render a confdir into a
	// scratch tree and compare it with the live files.
	DestRoot string
}

// ConfigError is a problem with one resource file, located as precisely as
// the file allows.
type ConfigError struct {
	File string
	Line int    // 0 when unknown
	Key  string // the offending key, "" when not about one key
	Err  error
}

func (e *ConfigError) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc += ":" + strconv.Itoa(e.Line)
	}
	if e.Key != "" {
		return fmt.Sprintf("%s: key %q: %v", loc, e.Key, e.Err)
	}
	return fmt.Sprintf("%s: %v", loc, e.Err)
}

func (e *ConfigError) Unwrap() error { return e.Err }

// ResourceFiles lists conf.d/**/*toml in lexical order, as confd finds them.
func ResourceFiles(confDir string) ([]string, error) {
	dir := filepath.Join(confDir, "conf.d")
	info, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("resource directory: %w (give -confdir the directory that holds conf.d/ and templates/)", err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("resource directory %s is not a directory", dir)
	}
	var files []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(d.Name(), "toml") {
			files = append(files, p)
		}
		return nil
	})
	sort.Strings(files)
	return files, err
}

// Confdir is what loading a confdir found, by resource file.
type Confdir struct {
	// Files are the resource files, in lexical order.
	Files []string
	// Resources holds the files that loaded, Errors the ones that did not.
	Resources map[string]*Resource
	Errors    map[string]error
}

// LoadConfdir loads every resource file. A file that does not load is in
// Errors and the others load regardless; the error is about the confdir
// itself (no conf.d).
func LoadConfdir(opts LoadOptions) (*Confdir, error) {
	files, err := ResourceFiles(opts.ConfDir)
	if err != nil {
		return nil, err
	}
	c := &Confdir{Files: files, Resources: map[string]*Resource{}, Errors: map[string]error{}}
	for _, f := range files {
		if r, err := Load(f, opts); err != nil {
			c.Errors[f] = err
		} else {
			c.Resources[f] = r
		}
	}
	return c, nil
}

// List returns the resources that loaded, in file order.
func (c *Confdir) List() []*Resource {
	var list []*Resource
	for _, f := range c.Files {
		if r := c.Resources[f]; r != nil {
			list = append(list, r)
		}
	}
	return list
}

// ErrorList returns the load errors, in file order.
func (c *Confdir) ErrorList() []error {
	var errs []error
	for _, f := range c.Files {
		if err := c.Errors[f]; err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// LoadAll loads every resource file, returning the resources that loaded
// and the errors of the files (or the confdir) that did not.
func LoadAll(opts LoadOptions) (resources []*Resource, errs []error) {
	c, err := LoadConfdir(opts)
	if err != nil {
		return nil, []error{err}
	}
	return c.List(), c.ErrorList()
}

// resourceFile is the TOML shape of a resource file.
type resourceFile struct {
	Template *templateTable `toml:"template"`
}

type templateTable struct {
	Src              string   `toml:"src"`
	Dest             string   `toml:"dest"`
	Keys             []string `toml:"keys"`
	Prefix           string   `toml:"prefix"`
	UID              *int     `toml:"uid"`
	GID              *int     `toml:"gid"`
	Owner            string   `toml:"owner"`
	Group            string   `toml:"group"`
	Mode             any      `toml:"mode"`
	CheckCmd         string   `toml:"check_cmd"`
	ReloadCmd        string   `toml:"reload_cmd"`
	CheckCmdTimeout  any      `toml:"check_cmd_timeout"`
	ReloadCmdTimeout any      `toml:"reload_cmd_timeout"`
	Wait             string   `toml:"wait"`
}

// Load reads one resource file and parses its template.
func Load(file string, opts LoadOptions) (*Resource, error) {
	raw, err := readRegular(file)
	if err != nil {
		return nil, &ConfigError{File: file, Err: err}
	}
	return parseResource(file, raw, opts)
}

// parseResource builds the resource that file, holding raw, describes.
func parseResource(file string, raw []byte, opts LoadOptions) (*Resource, error) {
	var rf resourceFile
	md, err := toml.Decode(string(raw), &rf)
	if err != nil {
		return nil, tomlError(file, err)
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		k := undecoded[0]
		return nil, &ConfigError{File: file, Line: lineOfKey(raw, k[len(k)-1]), Key: k.String(),
			Err: errors.New("unknown key (a typo? confd would silently ignore it)")}
	}
	if rf.Template == nil {
		return nil, &ConfigError{File: file, Err: errors.New("no [template] table")}
	}
	b := builder{file: file, raw: raw, opts: opts, t: rf.Template}
	return b.build()
}

type builder struct {
	file string
	raw  []byte
	opts LoadOptions
	t    *templateTable
}

func (b *builder) fail(key string, err error) error {
	line := 0
	if key != "" {
		line = lineOfKey(b.raw, key)
	}
	return &ConfigError{File: b.file, Line: line, Key: key, Err: err}
}

func (b *builder) build() (*Resource, error) {
	t := b.t
	r := &Resource{Name: filepath.Base(b.file), File: b.file, Dest: filepath.Clean(t.Dest), Keys: t.Keys, UID: -1, GID: -1}
	if t.Src == "" {
		return nil, b.fail("src", errors.New("missing: name the template file under templates/"))
	}
	if t.Dest == "" {
		return nil, b.fail("dest", errors.New("missing: name the file to write"))
	}
	// A relative dest would depend on the daemon's working directory, and
	// an unclean one would hide that two resources share a file.
	if !filepath.IsAbs(t.Dest) {
		return nil, b.fail("dest", fmt.Errorf("%q is not an absolute path: name the file to write from /", t.Dest))
	}
	r.Src = filepath.Join(b.opts.ConfDir, "templates", t.Src)
	if b.opts.DestRoot != "" {
		r.Dest, r.MakeDirs = filepath.Join(b.opts.DestRoot, t.Dest), true
	}
	r.Prefix = effectivePrefix(b.opts.Prefix, t.Prefix)
	for _, k := range t.Keys {
		if k == "" {
			return nil, b.fail("keys", errors.New("empty key"))
		}
		r.PrefixedKeys = append(r.PrefixedKeys, path.Join(r.Prefix, k))
	}
	steps := []func(*Resource) error{b.mode, b.owner, b.commands, b.wait, b.template}
	for _, step := range steps {
		if err := step(r); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// effectivePrefix follows confd 0.16: a global prefix replaces the
// resource's, and a prefix always starts at the root.
func effectivePrefix(global, own string) string {
	p := own
	if global != "" {
		p = global
	}
	return path.Join("/", p)
}

func (b *builder) mode(r *Resource) error {
	switch m := b.t.Mode.(type) {
	case nil:
		return nil
	case int64:
		// A TOML integer is only a mode when written in octal (0o644);
		// mode = 644 is decimal and means nothing sensible.
		line := lineOfKey(b.raw, "mode")
		written := string(bytes.Split(b.raw, []byte("\n"))[max(line-1, 0)])
		if !strings.Contains(written, "0o") || m <= 0 || m > 0o7777 {
			return b.fail("mode", fmt.Errorf("%d is not a file mode; write it as a string like \"0644\"", m))
		}
		r.Mode = fileMode(uint32(m))
		return nil
	case string:
		v, err := parseOctalMode(m)
		if err != nil {
			return b.fail("mode", err)
		}
		r.Mode = v
		return nil
	default:
		return b.fail("mode", fmt.Errorf("want an octal string such as \"0644\", got %v", m))
	}
}

// parseOctalMode reads "0644", "644" or "0o644" as octal. confd reads "644"
// as decimal (giving mode 01204); nobody means that.
func parseOctalMode(s string) (fs.FileMode, error) {
	digits := strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0O")
	v, err := strconv.ParseUint(digits, 8, 32)
	if err != nil || digits == "" || v == 0 || v > 0o7777 {
		return 0, fmt.Errorf("%q is not an octal file mode; write it like \"0644\"", s)
	}
	return fileMode(uint32(v)), nil
}

func fileMode(bits uint32) fs.FileMode {
	m := fs.FileMode(bits & 0o777)
	if bits&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if bits&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if bits&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

func (b *builder) owner(r *Resource) error {
	t := b.t
	if t.UID != nil {
		r.UID = *t.UID
	}
	if t.GID != nil {
		r.GID = *t.GID
	}
	if t.Owner != "" {
		u, err := user.Lookup(t.Owner)
		if err != nil {
			return b.fail("owner", fmt.Errorf("no such user %q", t.Owner))
		}
		uid, _ := strconv.Atoi(u.Uid)
		if t.UID != nil && *t.UID != uid {
			return b.fail("owner", fmt.Errorf("user %s is uid %d but uid = %d; keep one of them", t.Owner, uid, *t.UID))
		}
		r.UID = uid
	}
	if t.Group != "" {
		g, err := user.LookupGroup(t.Group)
		if err != nil {
			return b.fail("group", fmt.Errorf("no such group %q", t.Group))
		}
		gid, _ := strconv.Atoi(g.Gid)
		if t.GID != nil && *t.GID != gid {
			return b.fail("group", fmt.Errorf("group %s is gid %d but gid = %d; keep one of them", t.Group, gid, *t.GID))
		}
		r.GID = gid
	}
	if r.UID < -1 || r.GID < -1 {
		return b.fail("uid", errors.New("negative uid or gid"))
	}
	// The kernel keeps 32 bits of an id: chown to 4294967296 would give
	// the file to root.
	if r.UID > maxID {
		return b.fail("uid", fmt.Errorf("%d is above %d, the largest uid", r.UID, maxID))
	}
	if r.GID > maxID {
		return b.fail("gid", fmt.Errorf("%d is above %d, the largest gid", r.GID, maxID))
	}
	return nil
}

// maxID is the largest uid or gid: ids are 32 bits, and the largest of
// those means "no id" to chown.
const maxID = 1<<32 - 2

func (b *builder) commands(r *Resource) error {
	var err error
	if r.CheckCmd, err = parseCommand("check_cmd", b.t.CheckCmd); err != nil {
		return b.fail("check_cmd", err)
	}
	if r.ReloadCmd, err = parseCommand("reload_cmd", b.t.ReloadCmd); err != nil {
		return b.fail("reload_cmd", err)
	}
	r.checkCmdText, r.reloadCmdText = b.t.CheckCmd, b.t.ReloadCmd
	if r.CheckTimeout, err = parseTimeout(b.t.CheckCmdTimeout); err != nil {
		return b.fail("check_cmd_timeout", err)
	}
	if r.ReloadTimeout, err = parseTimeout(b.t.ReloadCmdTimeout); err != nil {
		return b.fail("reload_cmd_timeout", err)
	}
	return nil
}

func parseCommand(name, text string) (*template.Template, error) {
	if strings.TrimSpace(text) == "" {
		return nil, nil
	}
	return template.New(name).Option("missingkey=error").Parse(text)
}

// parseTimeout accepts a duration string ("30s") or whole seconds.
func parseTimeout(v any) (time.Duration, error) {
	switch t := v.(type) {
	case nil:
		return DefaultCommandTimeout, nil
	case int64:
		if t <= 0 {
			return 0, fmt.Errorf("%d: want a positive number of seconds", t)
		}
		return time.Duration(t) * time.Second, nil
	case string:
		d, err := time.ParseDuration(t)
		if err != nil || d <= 0 {
			return 0, fmt.Errorf("%q: want a positive duration such as \"30s\"", t)
		}
		return d, nil
	default:
		return 0, fmt.Errorf("%v: want a duration such as \"30s\"", v)
	}
}

func (b *builder) wait(r *Resource) error {
	if b.t.Wait == "" {
		return nil
	}
	min, max, err := ParseWait(b.t.Wait)
	if err != nil {
		return b.fail("wait", err)
	}
	r.WaitMin, r.WaitMax, r.WaitSet = min, max, true
	return nil
}

// ParseWait reads a quiescence setting "MIN:MAX" or "MIN" (MAX is then
// 4×MIN, as consul-template does). "0" turns quiescence off.
func ParseWait(s string) (min, max time.Duration, err error) {
	minText, maxText, hasMax := strings.Cut(s, ":")
	if min, err = time.ParseDuration(minText); err != nil || min < 0 {
		return 0, 0, fmt.Errorf("wait %q: want MIN:MAX durations such as 2s:10s", s)
	}
	if min > math.MaxInt64/4 {
		return 0, 0, fmt.Errorf("wait %q: MIN is too long", s)
	}
	max = 4 * min
	if hasMax {
		if max, err = time.ParseDuration(maxText); err != nil || max < min {
			return 0, 0, fmt.Errorf("wait %q: want MIN:MAX durations with MAX >= MIN", s)
		}
	}
	return min, max, nil
}

func (b *builder) template(r *Resource) error {
	text, err := readRegular(r.Src)
	if err != nil {
		return b.fail("src", fmt.Errorf("template %s: %w", r.Src, err))
	}
	if r.Template, err = tmpl.Parse(r.Src, string(text), b.opts.TemplateEnv); err != nil {
		return b.fail("src", err)
	}
	return nil
}

// readRegular reads a regular file (or a link to one). Anything else named
// by mistake would hang the load: opening a FIFO waits for a writer, and
// a device such as /dev/zero never ends.
func readRegular(name string) ([]byte, error) {
	info, err := os.Stat(name)
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", name, info.Mode().Type())
	}
	return os.ReadFile(name)
}

var tomlLineRE = regexp.MustCompile(`line (\d+)`)

func tomlError(file string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return &ConfigError{File: file, Line: pe.Position.Line, Key: pe.LastKey, Err: errors.New(pe.Message)}
	}
	ce := &ConfigError{File: file, Err: err}
	if m := tomlLineRE.FindStringSubmatch(err.Error()); m != nil {
		ce.Line, _ = strconv.Atoi(m[1])
	}
	return ce
}

// lineOfKey finds the first line that assigns key, for error messages.
func lineOfKey(raw []byte, key string) int {
	re := regexp.MustCompile(`^\s*["']?` + regexp.QuoteMeta(key) + `["']?\s*=`)
	for i, line := range bytes.Split(raw, []byte("\n")) {
		if re.Match(line) {
			return i + 1
		}
	}
	return 0
}

// Roots is the smallest set of etcd subtrees that covers every key of every
// resource: what must be fetched, once each.
func Roots(resources []*Resource) []string {
	var keys []string
	for _, r := range resources {
		keys = append(keys, r.PrefixedKeys...)
	}
	return backends.MinimalRoots(keys)
}

// commandLine renders a check or reload command for a stage file.
func (r *Resource) commandLine(t *template.Template, stage string) (string, error) {
	var buf bytes.Buffer
	if err := t.Execute(&buf, map[string]string{"src": stage, "dest": r.Dest}); err != nil {
		return "", fmt.Errorf("%s: %w", r.File, err)
	}
	return buf.String(), nil
}

// AdHoc builds a resource with no resource file and no destination, for
// rendering one template to standard output: src is a template file path,
// keys are relative to prefix.
func AdHoc(src, prefix string, keys []string, env tmpl.Env) (*Resource, error) {
	r := &Resource{Name: filepath.Base(src), File: src, Src: src, Prefix: effectivePrefix(prefix, ""),
		Keys: keys, UID: -1, GID: -1}
	for _, k := range keys {
		r.PrefixedKeys = append(r.PrefixedKeys, path.Join(r.Prefix, k))
	}
	text, err := os.ReadFile(src)
	if err != nil {
		return nil, fmt.Errorf("template: %w", err)
	}
	if r.Template, err = tmpl.Parse(src, string(text), env); err != nil {
		return nil, err
	}
	return r, nil
}
