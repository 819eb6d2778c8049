package envoy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// manifest is one YAML document of the kit, decoded generically.
type manifest struct {
	file string
	doc  map[string]any
}

func (m manifest) kind() string { s, _ := dig(m.doc, "kind").(string); return s }
func (m manifest) name() string { s, _ := dig(m.doc, "metadata", "name").(string); return s }
func (m manifest) namespace() string {
	s, _ := dig(m.doc, "metadata", "namespace").(string)
	return s
}

// decodeAll decodes every document of a multi-document YAML stream.
func decodeAll(data []byte) ([]map[string]any, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var out []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if doc != nil {
			out = append(out, doc)
		}
	}
}

// loadManifests reads every *.yaml under the given directories.
func loadManifests(t *testing.T, dirs ...string) []manifest {
	t.Helper()
	var out []manifest
	for _, dir := range dirs {
		files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no YAML in %s: %v", dir, err)
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			docs, err := decodeAll(data)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(docs) == 0 {
				t.Fatalf("%s: no documents", f)
			}
			for _, d := range docs {
				out = append(out, manifest{file: f, doc: d})
			}
		}
	}
	return out
}

// dig walks maps by string key and lists by int index; nil when absent.
func dig(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k < 0 || k >= len(l) {
				return nil
			}
			v = l[k]
		default:
			panic(fmt.Sprintf("dig: bad path element %T", p))
		}
	}
	return v
}

// eachMap calls fn on every map in the tree, depth first, and returns how
// many calls reported a change.
func eachMap(v any, fn func(m map[string]any) bool) int {
	n := 0
	switch t := v.(type) {
	case map[string]any:
		if fn(t) {
			n++
		}
		for _, e := range t {
			n += eachMap(e, fn)
		}
	case []any:
		for _, e := range t {
			n += eachMap(e, fn)
		}
	}
	return n
}

// typed returns a mutation target selector: maps whose "@type" ends in suffix.
func typed(suffix string, fn func(m map[string]any)) func(root any) int {
	return func(root any) int {
		return eachMap(root, func(m map[string]any) bool {
			if s, _ := m["@type"].(string); strings.HasSuffix(s, "/"+suffix) {
				fn(m)
				return true
			}
			return false
		})
	}
}

// named selects maps with the given "name" value.
func named(name string, fn func(m map[string]any)) func(root any) int {
	return func(root any) int {
		return eachMap(root, func(m map[string]any) bool {
			if m["name"] == name {
				fn(m)
				return true
			}
			return false
		})
	}
}

// deepCopy copies a generic YAML tree.
func deepCopy(v any) any {
	switch t := v.(type) {
	case map[string]any:
		c := make(map[string]any, len(t))
		for k, e := range t {
			c[k] = deepCopy(e)
		}
		return c
	case []any:
		c := make([]any, len(t))
		for i, e := range t {
			c[i] = deepCopy(e)
		}
		return c
	default:
		return t
	}
}

// errorsContain reports whether err's text contains want.
func errorsContain(err error, want string) bool {
	return err != nil && strings.Contains(err.Error(), want)
}

func sortedKeys(m map[string]any) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
