// Package cliconfig layers a command's settings the way operators expect:
// defaults < config file < environment < command-line flags. (confd 0.16
// lets its config file override the command line; confsync does not.)
//
// Every setting is a flag; the config file and the environment only fill in
// flags the command line left alone, through the flags' own Set methods, so
// there is one parser per setting.
package cliconfig

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
)

// Layers describes where settings come from besides the command line.
type Layers struct {
	// FileKeys maps config-file keys to flag names. Keys not in it are
	// rejected, naming the file and key.
	FileKeys map[string]string
	// Unsupported maps config-file keys confsync recognises but does not
	// implement to an explanation; they are rejected with it.
	Unsupported map[string]string
	// EnvPrefixes are tried in order for each flag: with "CONFSYNC_" the
	// flag client-cert is read from CONFSYNC_CLIENT_CERT.
	EnvPrefixes []string
	// EnvAliases maps extra variable names to flag names (confd's
	// CONFD_CLIENT_CAKEYS, say). They rank below the prefixed names.
	EnvAliases map[string]string
	// LookupEnv reads a variable; nil means os.LookupEnv.
	LookupEnv func(string) (string, bool)
}

// Apply fills the flags of fs that were not set on the command line, from
// the environment first and then from the config file (skipped when path
// is ""). fs must already have parsed the command line.
func (l Layers) Apply(fs *flag.FlagSet, path string) error {
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	fileValues, err := l.readFile(path)
	if err != nil {
		return err
	}
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if explicit[f.Name] {
			return
		}
		if name, v, ok := l.fromEnv(f.Name); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("environment variable %s: %w", name, err))
			}
			return
		}
		if vs, ok := fileValues[f.Name]; ok {
			if err := setAll(fs, f.Name, vs); err != nil {
				errs = append(errs, fmt.Errorf("%s: key for -%s: %w", path, f.Name, err))
			}
		}
	})
	return errors.Join(errs...)
}

func (l Layers) fromEnv(flagName string) (string, string, bool) {
	lookup := l.LookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	suffix := strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
	for _, p := range l.EnvPrefixes {
		if v, ok := lookup(p + suffix); ok {
			return p + suffix, v, true
		}
	}
	aliases := make([]string, 0, len(l.EnvAliases))
	for alias, target := range l.EnvAliases {
		if target == flagName {
			aliases = append(aliases, alias)
		}
	}
	sort.Strings(aliases)
	for _, alias := range aliases {
		if v, ok := lookup(alias); ok {
			return alias, v, true
		}
	}
	return "", "", false
}

// readFile decodes a flat TOML file into flag name → values.
func (l Layers) readFile(path string) (map[string][]string, error) {
	out := map[string][]string{}
	if path == "" {
		return out, nil
	}
	var raw map[string]any
	if _, err := toml.DecodeFile(path, &raw); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		flagName, ok := l.FileKeys[key]
		if !ok {
			if why, known := l.Unsupported[key]; known {
				return nil, fmt.Errorf("config file %s: key %q: %s", path, key, why)
			}
			return nil, fmt.Errorf("config file %s: unknown key %q", path, key)
		}
		vs, err := values(raw[key])
		if err != nil {
			return nil, fmt.Errorf("config file %s: key %q: %w", path, key, err)
		}
		out[flagName] = vs
	}
	return out, nil
}

func values(v any) ([]string, error) {
	switch t := v.(type) {
	case string:
		return []string{t}, nil
	case bool, int64, float64:
		return []string{fmt.Sprint(t)}, nil
	case []any:
		var out []string
		for _, item := range t {
			s, ok := item.(string)
			if !ok {
				return nil, fmt.Errorf("list item %v is not a string", item)
			}
			out = append(out, s)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("unsupported value %v (want a string, number, boolean or list of strings)", v)
	}
}

func setAll(fs *flag.FlagSet, name string, vs []string) error {
	for _, v := range vs {
		if err := fs.Set(name, v); err != nil {
			return err
		}
	}
	return nil
}

// Strings is a repeatable flag; each use appends, and a comma-separated
// value adds several items.
type Strings []string

func (s *Strings) String() string { return strings.Join(*s, ",") }

// Set appends one or more comma-separated items.
func (s *Strings) Set(v string) error {
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*s = append(*s, item)
		}
	}
	return nil
}
