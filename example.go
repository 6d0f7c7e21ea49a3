// Package confsync holds the example confdir (conf.d/ and templates/ at the
// root of the repository) so that the demo can run from anywhere. The
// program itself is in cmd/confsync.
package confsync

import "embed"

// ExampleConfdir is the repository's example confdir: conf.d/*.toml
// resources and their templates, for the site's real consumers.
//
//go:embed all:conf.d all:templates
var ExampleConfdir embed.FS
