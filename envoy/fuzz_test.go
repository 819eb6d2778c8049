package envoy

import (
	"encoding/json"
	"os"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// FuzzParseBootstrap: arbitrary input never panics the parser, the
// validator or the invariant checks, and an accepted bootstrap survives a
// protojson round trip unchanged.
func FuzzParseBootstrap(f *testing.F) {
	for _, name := range bootstrapFiles {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBootstrap(data)
		if err != nil {
			return
		}
		_ = Validate(b)
		_ = CheckInvariants(b)
		_ = UndecidedPaths(b)
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
	})
}

// FuzzYAMLToJSON: the converter either fails or emits valid JSON.
func FuzzYAMLToJSON(f *testing.F) {
	f.Add([]byte("a: 1\nb: [x, {c: true}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		js, err := YAMLToJSON(data)
		if err != nil {
			return
		}
		if !json.Valid(js) {
			t.Fatalf("invalid JSON %q from %q", js, data)
		}
	})
}
