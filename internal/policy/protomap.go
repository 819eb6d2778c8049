package policy

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"
)

// input.attributes is opa-envoy-plugin's own conversion of the protobuf
// (envoyauth/protomap.go, then ast.InterfaceToValue), not protojson's:
//
//   - populated fields only, under their lowerCamel JSON names;
//   - a google.protobuf.Struct becomes its plain object (AsMap); every other
//     message, well-known ones included, is an object of its fields, so a
//     Timestamp is {"seconds": n, "nanos": n} (zero fields left out) and an
//     Any is {"typeUrl": …, "value": <base64>};
//   - integers of every width are numbers (protojson writes 64-bit ones as
//     strings), enums are their numbers (protojson: names), bytes are
//     standard base64, float fields are numbers ('f' format for float,
//     shortest 'g' for double and Struct numbers, as OPA formats them).
//
// Two deliberate differences, both refusals (request_parse_error): a float
// that is NaN or infinite (opa-envoy-plugin makes an invalid number of it)
// and nesting deeper than MaxProtoDepth.

// MaxProtoDepth bounds recursion through nested messages (google.protobuf.Struct
// can nest arbitrarily deep).
const MaxProtoDepth = 64

// messageToValue converts m as opa-envoy-plugin's protomap does.
func messageToValue(m protoreflect.Message, depth int) (ast.Value, error) {
	if depth > MaxProtoDepth {
		return nil, errors.New("message nesting too deep")
	}
	if s, ok := m.Interface().(*structpb.Struct); ok {
		return structValue(s, depth)
	}
	kv := make([][2]*ast.Term, 0, m.Descriptor().Fields().Len())
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		var t *ast.Term
		t, err = fieldToTerm(fd, v, depth)
		if err != nil {
			return false
		}
		kv = append(kv, ast.Item(ast.StringTerm(fd.JSONName()), t))
		return true
	})
	if err != nil {
		return nil, err
	}
	return ast.NewObject(kv...), nil
}

func fieldToTerm(fd protoreflect.FieldDescriptor, v protoreflect.Value, depth int) (*ast.Term, error) {
	switch {
	case fd.IsMap():
		vd := fd.MapValue()
		kv := make([][2]*ast.Term, 0, v.Map().Len())
		var err error
		v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
			var t *ast.Term
			t, err = singularToTerm(vd, mv, depth)
			if err != nil {
				return false
			}
			kv = append(kv, ast.Item(ast.StringTerm(k.String()), t))
			return true
		})
		if err != nil {
			return nil, err
		}
		return ast.NewTerm(ast.NewObject(kv...)), nil
	case fd.IsList():
		l := v.List()
		arr := make([]*ast.Term, l.Len())
		for i := range arr {
			t, err := singularToTerm(fd, l.Get(i), depth)
			if err != nil {
				return nil, err
			}
			arr[i] = t
		}
		return ast.ArrayTerm(arr...), nil
	default:
		return singularToTerm(fd, v, depth)
	}
}

func singularToTerm(fd protoreflect.FieldDescriptor, v protoreflect.Value, depth int) (*ast.Term, error) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return ast.StringTerm(v.String()), nil
	case protoreflect.BoolKind:
		if v.Bool() {
			return trueTerm, nil
		}
		return falseTerm, nil
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return ast.IntNumberTerm(int(v.Int())), nil // int is 64 bits on every supported platform
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return ast.UIntNumberTerm(v.Uint()), nil
	case protoreflect.EnumKind:
		return ast.IntNumberTerm(int(v.Enum())), nil
	case protoreflect.FloatKind:
		f := v.Float()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("%s: %v is not a number", fd.FullName(), f)
		}
		return ast.NewTerm(ast.Number(strconv.FormatFloat(f, 'f', -1, 32))), nil
	case protoreflect.DoubleKind:
		return floatTerm(v.Float())
	case protoreflect.BytesKind:
		return ast.StringTerm(base64.StdEncoding.EncodeToString(v.Bytes())), nil
	case protoreflect.MessageKind, protoreflect.GroupKind:
		val, err := messageToValue(v.Message(), depth+1)
		if err != nil {
			return nil, err
		}
		return ast.NewTerm(val), nil
	}
	return nil, fmt.Errorf("unsupported field kind %v", fd.Kind())
}

// floatTerm is a double as OPA's InterfaceToValue writes a float64.
func floatTerm(f float64) (*ast.Term, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("%v is not a number", f)
	}
	return ast.NewTerm(ast.Number(strconv.FormatFloat(f, 'g', -1, 64))), nil
}

// structValue is Struct.AsMap as OPA converts it.
func structValue(s *structpb.Struct, depth int) (ast.Object, error) {
	kv := make([][2]*ast.Term, 0, len(s.GetFields()))
	for k, v := range s.GetFields() {
		t, err := structFieldTerm(v, depth+1)
		if err != nil {
			return nil, err
		}
		kv = append(kv, ast.Item(ast.StringTerm(k), t))
	}
	return ast.NewObject(kv...), nil
}

// structFieldTerm is Value.AsInterface as OPA converts it: an unset Value is
// null.
func structFieldTerm(v *structpb.Value, depth int) (*ast.Term, error) {
	if depth > MaxProtoDepth {
		return nil, errors.New("message nesting too deep")
	}
	switch k := v.GetKind().(type) {
	case *structpb.Value_NumberValue:
		return floatTerm(k.NumberValue)
	case *structpb.Value_StringValue:
		return ast.StringTerm(k.StringValue), nil
	case *structpb.Value_BoolValue:
		if k.BoolValue {
			return trueTerm, nil
		}
		return falseTerm, nil
	case *structpb.Value_StructValue:
		o, err := structValue(k.StructValue, depth)
		if err != nil {
			return nil, err
		}
		return ast.NewTerm(o), nil
	case *structpb.Value_ListValue:
		vals := k.ListValue.GetValues()
		arr := make([]*ast.Term, len(vals))
		for i, e := range vals {
			t, err := structFieldTerm(e, depth+1)
			if err != nil {
				return nil, err
			}
			arr[i] = t
		}
		return ast.ArrayTerm(arr...), nil
	}
	return nullTerm, nil // NullValue or no kind set
}
