package envoy

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

const (
	typeExtAuthz         = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
	typeExtAuthzPerRoute = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
	typeHCM              = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)

// FuzzParseBootstrap: arbitrary input never panics the parser, the
// validator or the invariant checks; an accepted bootstrap survives a
// protojson round trip unchanged; the checks do not change what they check
// and give the same answer on the round-tripped copy; and their answers
// agree with an independent reading of the bootstrap's JSON form:
//   - Validate accepts only what the top-level generated rules accept;
//   - CheckInvariants never accepts a fail-open ext_authz filter (anywhere),
//     a virtual host that turns ext_authz off, or an ext_authz bypass on a
//     route that does not match one exact path;
//   - UndecidedPaths lists exactly the routes that reach an upstream
//     without a decision: those that turn ext_authz off, and those of a
//     connection manager without it.
func FuzzParseBootstrap(f *testing.F) {
	for _, name := range bootstrapFiles {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	// Seeds that break one invariant each, so that the properties below are
	// exercised by make test and not only by a long fuzzing run.
	shipped, err := os.ReadFile("envoy.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, edit := range [][2]string{
		{"failure_mode_allow: false", "failure_mode_allow: true"},
		{"path: /healthz", "prefix: /healthz"},
		{`domains: ["*"]`, `domains: ["*"]
              typed_per_filter_config:
                envoy.filters.http.ext_authz:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                  disabled: true`},
	} {
		seed := strings.Replace(string(shipped), edit[0], edit[1], 1)
		if seed == string(shipped) {
			f.Fatalf("envoy.yaml no longer contains %q: update this seed", edit[0])
		}
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBootstrap(data)
		if err != nil {
			return
		}
		before := proto.Clone(b)
		verr, ierr, paths := Validate(b), CheckInvariants(b), UndecidedPaths(b)
		if !proto.Equal(b, before) {
			t.Fatal("the checks changed the bootstrap")
		}
		js, err := protojson.Marshal(b)
		if err != nil {
			t.Fatalf("marshal accepted bootstrap: %v", err)
		}
		var again bootstrapv3.Bootstrap
		if err := protojson.Unmarshal(js, &again); err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if !proto.Equal(b, &again) {
			t.Fatal("round trip changed the bootstrap")
		}
		if errText(Validate(&again)) != errText(verr) || errText(CheckInvariants(&again)) != errText(ierr) ||
			!slices.Equal(UndecidedPaths(&again), paths) {
			t.Fatal("the checks answer differently on an equal bootstrap")
		}

		if verr == nil && b.ValidateAll() != nil {
			t.Fatalf("Validate accepted what ValidateAll refuses: %v", b.ValidateAll())
		}
		var doc any
		if err := json.Unmarshal(js, &doc); err != nil {
			t.Fatal(err)
		}
		var want []string
		var failOpen, vhostOff, inexactBypass bool
		jsonWalk(doc, func(o map[string]any) {
			if o["@type"] == typeExtAuthz && o["failureModeAllow"] == true {
				failOpen = true
			}
			if o["@type"] != typeHCM {
				return
			}
			deciding := false
			for _, hf := range jsonObjects(o["httpFilters"]) {
				deciding = deciding || hf["name"] == ExtAuthzFilterName
			}
			for _, vh := range jsonObjects(jsonAt(o, "routeConfig", "virtualHosts")) {
				vhostOff = vhostOff || turnsAuthzOff(vh)
				for _, r := range jsonObjects(vh["routes"]) {
					if _, direct := r["directResponse"]; direct || (deciding && !turnsAuthzOff(r)) {
						continue
					}
					p, _ := jsonAt(r, "match", "path").(string)
					want = append(want, p)
					inexactBypass = inexactBypass || p == ""
				}
			}
		})
		if ierr == nil && (failOpen || vhostOff || inexactBypass) {
			t.Fatalf("CheckInvariants accepted: fail-open ext_authz %v, virtual host without ext_authz %v, undecided route without an exact path %v",
				failOpen, vhostOff, inexactBypass)
		}
		slices.Sort(want)
		got := slices.Clone(paths)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("UndecidedPaths = %q, the JSON has %q", got, want)
		}
	})
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// jsonWalk calls fn for every object in v, depth first.
func jsonWalk(v any, fn func(map[string]any)) {
	switch t := v.(type) {
	case map[string]any:
		fn(t)
		for _, e := range t {
			jsonWalk(e, fn)
		}
	case []any:
		for _, e := range t {
			jsonWalk(e, fn)
		}
	}
}

func jsonAt(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func jsonObjects(v any) []map[string]any {
	arr, _ := v.([]any)
	var out []map[string]any
	for _, e := range arr {
		if m, ok := e.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

// turnsAuthzOff reads a route's or virtual host's per-filter config as JSON.
func turnsAuthzOff(o map[string]any) bool {
	c, ok := jsonAt(o, "typedPerFilterConfig", ExtAuthzFilterName).(map[string]any)
	return ok && c["@type"] == typeExtAuthzPerRoute && c["disabled"] == true
}

// FuzzYAMLToJSON: the converter either fails or emits valid JSON, and that
// JSON (which is also YAML) converts to the same value again: conversion is
// a fixed point after one step, so nothing is lost or reinterpreted (a
// string that looks like a number, an escaped character, a large integer).
func FuzzYAMLToJSON(f *testing.F) {
	f.Add([]byte("a: 1\nb: [x, {c: true}]\n"))
	f.Add([]byte(`{"a": "1e3", "b": "\u2028<&>", "c": 18446744073709551615, "d": -0.0, "e": "yes", "f": null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		js, err := YAMLToJSON(data)
		if err != nil {
			return
		}
		if !json.Valid(js) {
			t.Fatalf("invalid JSON %q from %q", js, data)
		}
		again, err := YAMLToJSON(js)
		if err != nil {
			if errors.Is(err, ErrTooLarge) {
				return // the JSON form of a document near the limit may be longer
			}
			t.Fatalf("the JSON %q of %q does not convert again: %v", js, data, err)
		}
		var v1, v2 any
		if json.Unmarshal(js, &v1) != nil || json.Unmarshal(again, &v2) != nil || !reflect.DeepEqual(v1, v2) {
			t.Fatalf("round trip changed the value: %q -> %q -> %q", data, js, again)
		}
	})
}
