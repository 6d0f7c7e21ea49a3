// Package tmpl renders confd-compatible templates: Go text/template with
// confd v0.16's functions, reading keys from an immutable Store.
//
// A template is parsed once and executed many times, concurrently if need
// be, each time against the Store of the moment:
//
//	t, err := tmpl.Parse("/etc/confd/templates/pool.tmpl", text, tmpl.Env{})
//	...
//	err = t.Execute(&buf, tmpl.NewStore(keys))
//
// FUNCTIONS.md lists every function, its signature and semantics, and
// where it differs from confd.
package tmpl

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"text/template"
	"time"
)

// DefaultLookupTimeout bounds each DNS lookup when Env.LookupTimeout is zero.
const DefaultLookupTimeout = 10 * time.Second

// Env is what the template functions take from outside the template. Tests
// set it to get deterministic output; the zero Env uses the real process
// environment, clock, hostname and DNS resolver.
type Env struct {
	// Getenv answers getenv; nil means os.Getenv.
	Getenv func(key string) string
	// Hostname answers hostname; nil means os.Hostname.
	Hostname func() (string, error)
	// Now answers datetime; nil means time.Now.
	Now func() time.Time
	// Resolver answers lookupIP, lookupIPV4, lookupIPV6 and lookupSRV;
	// nil means net.DefaultResolver.
	Resolver *net.Resolver
	// LookupTimeout bounds each DNS lookup so a dead resolver cannot hang
	// a render; zero means DefaultLookupTimeout.
	LookupTimeout time.Duration
}

func (e Env) withDefaults() Env {
	if e.Getenv == nil {
		e.Getenv = os.Getenv
	}
	if e.Hostname == nil {
		e.Hostname = os.Hostname
	}
	if e.Now == nil {
		e.Now = time.Now
	}
	if e.Resolver == nil {
		e.Resolver = net.DefaultResolver
	}
	if e.LookupTimeout <= 0 {
		e.LookupTimeout = DefaultLookupTimeout
	}
	return e
}

// Template is a parsed template. It is never modified after Parse, so one
// Template may be executed from many goroutines at once, each with its own
// Store.
type Template struct {
	parsed *template.Template
}

// Parse parses text as a template named name. The name should be the
// template's file path: parse and execution errors start with
// "template: <name>:<line>:".
func Parse(name, text string, env Env) (*Template, error) {
	funcs := builtinFuncs(env.withDefaults())
	// The key functions must be known at parse time; Execute rebinds them
	// to the store it is given.
	for k, fn := range storeFuncs(nil) {
		funcs[k] = fn
	}
	t, err := template.New(name).Funcs(funcs).Parse(text)
	if err != nil {
		return nil, err
	}
	return &Template{parsed: t}, nil
}

// Name returns the name given to Parse.
func (t *Template) Name() string { return t.parsed.Name() }

// Execute renders the template against store and writes the result to w.
// As in confd the template's data (dot) is nil: everything comes through
// the functions. A nil store is an empty one.
//
// Output reaches w only when the whole template rendered: on an error
// (such as getv of a missing key, reported with the file, line and key)
// nothing is written.
func (t *Template) Execute(w io.Writer, store *Store) error {
	// The clone shares the parse trees; only its function table is ours,
	// which is what lets executions with different stores run concurrently.
	c, err := t.parsed.Clone()
	if err != nil {
		return fmt.Errorf("template: %s: %w", t.Name(), err)
	}
	c.Funcs(storeFuncs(store))
	var buf bytes.Buffer
	if err := c.Execute(&buf, nil); err != nil {
		return err
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("template: %s: write output: %w", t.Name(), err)
	}
	return nil
}
