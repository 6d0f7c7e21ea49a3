package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// version is the release version, set at link time by scripts/deb.sh:
//
//	go build -ldflags "-X main.version=1.2.0" ./cmd/confsync
//
// Empty means the module version from the build information: v1.2.0 for
// `go install github.com/confsync/confsync/cmd/confsync@v1.2.0`, devel for
// a build from a working tree.
var version string

// buildInfo describes this binary, from the linker and the build
// information Go records in every binary.
type buildInfo struct {
	Version string
	// Revision, Time and Modified describe the commit the binary was built
	// from (empty when built without VCS information, as with
	// -buildvcs=false or outside a clone).
	Revision string
	Time     string
	Modified bool
	Go       string
	Platform string
}

func readBuildInfo() buildInfo {
	b := buildInfo{Version: version, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	info, ok := debug.ReadBuildInfo()
	if ok {
		if b.Version == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			b.Version = info.Main.Version
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.time":
				b.Time = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if b.Version == "" {
		b.Version = "devel"
	}
	return b
}

func (b buildInfo) write(w io.Writer) {
	fmt.Fprintf(w, "confsync %s\n", b.Version)
	switch {
	case b.Revision == "":
		fmt.Fprintln(w, "  revision  unknown (built without VCS information)")
	default:
		var notes []string
		if b.Time != "" {
			notes = append(notes, "committed "+b.Time)
		}
		if b.Modified {
			notes = append(notes, "built with uncommitted changes")
		}
		fmt.Fprintf(w, "  revision  %s", b.Revision)
		if len(notes) > 0 {
			fmt.Fprintf(w, " (%s)", strings.Join(notes, ", "))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "  go        %s %s\n", b.Go, b.Platform)
}

// runVersion is `confsync version` and `confsync -version`.
func runVersion(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintf(stderr, "confsync version: takes no arguments, got %q\n", args[0])
		return 2
	}
	readBuildInfo().write(stdout)
	return 0
}
