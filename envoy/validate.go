package envoy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	// The typed extensions the kit uses. Importing them registers their
	// types, so "@type" URLs resolve; a type not listed here is an error,
	// which is what keeps an unknown or misspelled extension from passing.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// MaxConfigBytes bounds one configuration document. Real bootstraps are a
// few kilobytes; the bound keeps a hostile file from exhausting memory.
const MaxConfigBytes = 1 << 20

// maxDepth bounds nesting while converting YAML and walking messages.
const maxDepth = 100

// ErrTooLarge is returned for a document over MaxConfigBytes.
var ErrTooLarge = errors.New("configuration larger than 1 MiB")

// ParseBootstrap decodes one Envoy bootstrap written in YAML into the v3
// Bootstrap proto. Decoding is strict, as Envoy's is: an unknown field, a
// wrong enum name, a duplicate key or an "@type" that does not resolve is an
// error. It does not run the validation rules; see Validate.
func ParseBootstrap(data []byte) (*bootstrapv3.Bootstrap, error) {
	js, err := YAMLToJSON(data)
	if err != nil {
		return nil, err
	}
	var b bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{}).Unmarshal(js, &b); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return &b, nil
}

// YAMLToJSON converts a single YAML document to JSON, the form protojson
// reads. Mapping keys must be strings, as in JSON.
func YAMLToJSON(data []byte) ([]byte, error) {
	if len(data) > MaxConfigBytes {
		return nil, ErrTooLarge
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc any
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("yaml: empty document")
		}
		return nil, fmt.Errorf("yaml: %w", err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("yaml: expected exactly one document")
	}
	v, err := jsonValue(doc, 0)
	if err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// jsonValue rewrites what yaml.v3 decodes into values encoding/json accepts.
func jsonValue(v any, depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("yaml: nested too deeply")
	}
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			c, err := jsonValue(e, depth+1)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			out[k] = c
		}
		return out, nil
	case map[any]any:
		return nil, errors.New("yaml: mapping key is not a string")
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			c, err := jsonValue(e, depth+1)
			if err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
			out[i] = c
		}
		return out, nil
	case nil, bool, string, int, int64, uint64, float64:
		return t, nil
	default:
		// Timestamps and binary scalars have no protobuf JSON meaning here.
		return nil, fmt.Errorf("yaml: unsupported value of type %T", v)
	}
}

// validator is the method protoc-gen-validate generates on every message.
type validator interface{ ValidateAll() error }

// Validate runs the protoc-gen-validate rules on m and, because those rules
// stop at a google.protobuf.Any, unpacks every Any nested anywhere inside m
// (typed_config, typed_per_filter_config, typed_extension_protocol_options,
// transport sockets, access loggers, …) and validates each one the same way.
// All problems are reported, joined.
func Validate(m proto.Message) error {
	var errs []error
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			errs = append(errs, err)
		}
	}
	walkAnys(m.ProtoReflect(), string(m.ProtoReflect().Descriptor().Name()), 0, &errs)
	return errors.Join(errs...)
}

// walkAnys finds every set Any below msg, unpacks and validates it, and
// descends into the unpacked message.
func walkAnys(msg protoreflect.Message, path string, depth int, errs *[]error) {
	if depth > maxDepth {
		*errs = append(*errs, fmt.Errorf("%s: nested too deeply", path))
		return
	}
	msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() == nil {
			return true
		}
		p := path + "." + string(fd.Name())
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				return true
			}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				visit(mv.Message(), fmt.Sprintf("%s[%s]", p, k.String()), depth, errs)
				return true
			})
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				visit(l.Get(i).Message(), fmt.Sprintf("%s[%d]", p, i), depth, errs)
			}
		default:
			visit(v.Message(), p, depth, errs)
		}
		return true
	})
}

func visit(m protoreflect.Message, path string, depth int, errs *[]error) {
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		walkAnys(m, path, depth+1, errs)
		return
	}
	inner, err := a.UnmarshalNew()
	if err != nil {
		*errs = append(*errs, fmt.Errorf("%s: %w", path, err))
		return
	}
	p := path + "(" + string(inner.ProtoReflect().Descriptor().FullName()) + ")"
	if v, ok := inner.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			*errs = append(*errs, fmt.Errorf("%s: %w", p, err))
		}
	}
	walkAnys(inner.ProtoReflect(), p, depth+1, errs)
}
