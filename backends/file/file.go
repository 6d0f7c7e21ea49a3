// Package file is confd's -file backend: keys come from YAML or JSON files
// whose nested maps flatten to /a/b keys (list items to /a/0, /a/1...).
package file

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/confsync/confsync/backends"
	"go.yaml.in/yaml/v3"
)

// Source reads every file on each fetch, so edits are seen without a restart.
type Source struct {
	// Paths are files or directories (searched recursively).
	Paths []string
	// Filter is a glob on file names inside directories; empty means "*".
	Filter string
}

// Files lists the files Paths name, in a stable order: later files win when
// two define the same key.
func (s *Source) Files() ([]string, error) {
	filter := s.Filter
	if filter == "" {
		filter = "*"
	}
	if _, err := filepath.Match(filter, ""); err != nil {
		return nil, fmt.Errorf("-filter %q: %w", filter, err)
	}
	var files []string
	for _, p := range s.Paths {
		info, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("file backend: %w", err)
		}
		if !info.IsDir() {
			files = append(files, p)
			continue
		}
		var found []string
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if ok, _ := filepath.Match(filter, d.Name()); ok && !d.IsDir() {
				found = append(found, path)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("file backend: %w", err)
		}
		sort.Strings(found)
		files = append(files, found...)
	}
	return files, nil
}

// Fetch reads all files and returns the leaves under root.
func (s *Source) Fetch(ctx context.Context, root string) (*backends.Snapshot, error) {
	files, err := s.Files()
	if err != nil {
		return nil, err
	}
	root = backends.CleanKey(root)
	var b backends.Builder
	set := func(k, v string) {
		if backends.Covers(root, k) {
			b.Set(k, v)
		}
	}
	for _, f := range files {
		if err := loadFile(f, set); err != nil {
			return nil, err
		}
	}
	return &backends.Snapshot{Root: root, Tree: b.Tree(), FetchedAt: time.Now()}, nil
}

func loadFile(path string, set func(k, v string)) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("file backend: %w", err)
	}
	if strings.EqualFold(filepath.Ext(path), ".json") {
		err = flattenJSON(raw, set)
	} else {
		err = flattenYAML(raw, set)
	}
	if err != nil {
		return fmt.Errorf("file backend: %s: %w", path, err)
	}
	return nil
}

func flattenJSON(raw []byte, set func(k, v string)) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return err
	}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch t := v.(type) {
		case map[string]any:
			for k, child := range t {
				walk(prefix+"/"+k, child)
			}
		case []any:
			for i, child := range t {
				walk(prefix+"/"+strconv.Itoa(i), child)
			}
		case nil:
			set(prefix, "")
		default:
			set(prefix, fmt.Sprint(t))
		}
	}
	walk("", v)
	return nil
}

func flattenYAML(raw []byte, set func(k, v string)) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return err
	}
	if len(doc.Content) == 0 {
		return nil // an empty file defines nothing
	}
	return walkYAML("", doc.Content[0], set)
}

func walkYAML(prefix string, n *yaml.Node, set func(k, v string)) error {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if err := walkYAML(prefix+"/"+n.Content[i].Value, n.Content[i+1], set); err != nil {
				return err
			}
		}
	case yaml.SequenceNode:
		for i, child := range n.Content {
			if err := walkYAML(prefix+"/"+strconv.Itoa(i), child, set); err != nil {
				return err
			}
		}
	case yaml.AliasNode:
		return walkYAML(prefix, n.Alias, set)
	case yaml.ScalarNode:
		v, err := scalarText(n)
		if err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		set(prefix, v)
	}
	return nil
}

// scalarText renders a scalar as confd does: numbers and booleans in their
// canonical form, null as the empty string, strings as written.
func scalarText(n *yaml.Node) (string, error) {
	switch n.ShortTag() {
	case "!!null":
		return "", nil
	case "!!bool":
		var b bool
		if err := n.Decode(&b); err != nil {
			return "", err
		}
		return strconv.FormatBool(b), nil
	case "!!int":
		var i int64
		if err := n.Decode(&i); err != nil {
			return n.Value, nil // too big for int64: keep the digits
		}
		return strconv.FormatInt(i, 10), nil
	case "!!float":
		var f float64
		if err := n.Decode(&f); err != nil {
			return "", err
		}
		return strconv.FormatFloat(f, 'f', -1, 64), nil
	default:
		return n.Value, nil
	}
}
