package config

import (
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/agnivade/levenshtein"
	"go.yaml.in/yaml/v3"
)

// checkNode walks a YAML document against the type it will be decoded into
// and reports, in the file's own terms (line, key path, expected form),
// every unknown key and every value of the wrong form, so that one run names
// all of them instead of stopping at the first.
func checkNode(n *yaml.Node, t reflect.Type, path string, errs *[]string) {
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			checkNode(c, t, path, errs)
		}
		return
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Tag == "!!null" {
		return
	}
	add := func(format string, args ...any) {
		*errs = append(*errs, fmt.Sprintf("line %d: ", n.Line)+fmt.Sprintf(format, args...))
	}
	if t == durationType {
		var s string
		if n.Kind != yaml.ScalarNode || n.Decode(&s) != nil {
			add("%s: want a duration like 250ms, 30s or 1h", path)
		} else if _, err := time.ParseDuration(s); err != nil {
			add("%s: %q is not a duration (want one like 250ms, 30s or 1h)", path, s)
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			add("%s: want a mapping of keys, not %s", label(path), describe(n))
			return
		}
		known := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			f, ok := known[k.Value]
			if !ok {
				msg := fmt.Sprintf("line %d: unknown key %q", k.Line, k.Value)
				if path != "" {
					msg += " in " + path
				}
				if s := suggest(k.Value, known); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
				*errs = append(*errs, msg)
				continue
			}
			checkNode(v, f.Type, join(path, k.Value), errs)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			add("%s: want a list, not %s", path, describe(n))
			return
		}
		for i, c := range n.Content {
			checkNode(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), errs)
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			add("%s: want a string, not %s", path, describe(n))
		}
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.Decode(&b) != nil {
			add("%s: %s is not true or false", path, describe(n))
		}
	case reflect.Int, reflect.Int64, reflect.Uint32:
		v := reflect.New(t)
		if n.Kind != yaml.ScalarNode || n.Decode(v.Interface()) != nil {
			add("%s: %s is not a whole number in range", path, describe(n))
		}
	}
}

var durationType = reflect.TypeFor[Duration]()

// yamlFields maps a struct's YAML keys to its fields.
func yamlFields(t reflect.Type) map[string]reflect.StructField {
	m := map[string]reflect.StructField{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		m[name] = f
	}
	return m
}

// suggest returns the known key closest to k, if it is close.
func suggest(k string, known map[string]reflect.StructField) string {
	best, bestD := "", max(2, len(k)/3)+1
	for name := range known {
		if d := levenshtein.ComputeDistance(k, name); d < bestD || (d == bestD && name < best) {
			best, bestD = name, d
		}
	}
	return best
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func label(path string) string {
	if path == "" {
		return "the file"
	}
	return path
}

// describe names a node the way the file shows it.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.Value)
}
