package httpsig

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Errors of verification. Every failure wraps exactly one of them.
var (
	ErrMalformed    = errors.New("malformed signature fields")
	ErrNoSignature  = errors.New("no signature")
	ErrUnknownKey   = errors.New("signature by an unknown key")
	ErrBadSignature = errors.New("signature does not verify")
	ErrExpired      = errors.New("signature outside its validity")
	ErrComponent    = errors.New("covered component unavailable")
	// ErrNeedRequest: a "req" component is covered but the message has no
	// Request; the caller must supply it (not a verification failure).
	ErrNeedRequest = errors.New("the signature covers the request; supply it")
)

// AlgEd25519 is the RFC 9421 §3.3.6 algorithm name.
const AlgEd25519 = "ed25519"

// MaxComponents bounds the covered components of one signature.
const MaxComponents = 64

// Component is one covered component: a lowercase field name or a derived
// component ("@status"), optionally taken from the request ("req").
type Component struct {
	Name string
	Req  bool
}

func (c Component) String() string {
	s := strconv.Quote(c.Name)
	if c.Req {
		s += ";req"
	}
	return s
}

// Params are a signature's parameters and covered components.
type Params struct {
	Components []Component
	Created    int64 // Unix seconds; 0: absent
	Expires    int64 // Unix seconds; 0: absent
	KeyID      string
	Alg        string
	Tag        string
	Nonce      string
}

// appendSerialized appends the Signature-Input member value for p, the
// inner list and its parameters in the order created, expires, keyid, alg,
// nonce, tag: what AppendInnerList makes of the same list, without boxing
// each value.
func (p Params) appendSerialized(b []byte) ([]byte, error) {
	var err error
	b = append(b, '(')
	for i, c := range p.Components {
		if i > 0 {
			b = append(b, ' ')
		}
		if b, err = appendComponent(b, c); err != nil {
			return nil, err
		}
	}
	b = append(b, ')')
	for _, kv := range [...]struct {
		k string
		n int64
	}{{"created", p.Created}, {"expires", p.Expires}} {
		if kv.n != 0 {
			b = append(b, ';')
			b = append(b, kv.k...)
			b = append(b, '=')
			if b, err = appendBareItem(b, kv.n); err != nil {
				return nil, err
			}
		}
	}
	for _, kv := range [...][2]string{{"keyid", p.KeyID}, {"alg", p.Alg}, {"nonce", p.Nonce}, {"tag", p.Tag}} {
		if kv[1] != "" {
			b = append(b, ';')
			b = append(b, kv[0]...)
			b = append(b, '=')
			if b, err = appendString(b, kv[1]); err != nil {
				return nil, err
			}
		}
	}
	return b, nil
}

// InnerList returns the Signature-Input member value for p as a structured
// field inner list.
func (p Params) InnerList() InnerList {
	l := InnerList{Items: make([]Item, len(p.Components))}
	for i, c := range p.Components {
		l.Items[i].Value = c.Name
		if c.Req {
			l.Items[i].Params = Params0Req
		}
	}
	if p.Created != 0 {
		l.Params = append(l.Params, Param{"created", p.Created})
	}
	if p.Expires != 0 {
		l.Params = append(l.Params, Param{"expires", p.Expires})
	}
	for _, kv := range [...][2]string{{"keyid", p.KeyID}, {"alg", p.Alg}, {"nonce", p.Nonce}, {"tag", p.Tag}} {
		if kv[1] != "" {
			l.Params = append(l.Params, Param{kv[0], kv[1]})
		}
	}
	return l
}

// appendComponent appends a component identifier: the quoted name and, for
// a request component, ";req" (the only parameter this package accepts).
func appendComponent(b []byte, c Component) ([]byte, error) {
	b, err := appendString(b, c.Name)
	if err != nil {
		return nil, err
	}
	if c.Req {
		b = append(b, ";req"...)
	}
	return b, nil
}

// Params0Req is the parameter list of a "req" component.
var Params0Req = SFParams{{Key: "req", Value: true}}

// paramsFromList reads the signature parameters of a Signature-Input member.
func paramsFromList(l InnerList) (Params, error) {
	var p Params
	if len(l.Items) > MaxComponents {
		return p, fmt.Errorf("%w: more than %d covered components", ErrMalformed, MaxComponents)
	}
	for _, it := range l.Items {
		name, ok := it.Value.(string)
		if !ok {
			return p, fmt.Errorf("%w: component identifier is not a string", ErrMalformed)
		}
		c := Component{Name: name}
		for _, prm := range it.Params {
			if prm.Key == "req" && prm.Value == true {
				c.Req = true
				continue
			}
			return p, fmt.Errorf("%w: component %q: parameter %q is not supported", ErrComponent, name, prm.Key)
		}
		for _, prev := range p.Components {
			if prev == c {
				return p, fmt.Errorf("%w: component %s covered twice", ErrMalformed, c)
			}
		}
		p.Components = append(p.Components, c)
	}
	for _, prm := range l.Params {
		switch prm.Key {
		case "created", "expires":
			n, ok := prm.Value.(int64)
			if !ok || n <= 0 {
				return p, fmt.Errorf("%w: %s is not a positive integer", ErrMalformed, prm.Key)
			}
			if prm.Key == "created" {
				p.Created = n
			} else {
				p.Expires = n
			}
		case "keyid", "alg", "tag", "nonce":
			s, ok := prm.Value.(string)
			if !ok {
				return p, fmt.Errorf("%w: %s is not a string", ErrMalformed, prm.Key)
			}
			switch prm.Key {
			case "keyid":
				p.KeyID = s
			case "alg":
				p.Alg = s
			case "tag":
				p.Tag = s
			default:
				p.Nonce = s
			}
		}
		// Unknown parameters stay in the base (they are serialized from
		// the parsed list) and are otherwise ignored, as RFC 9421 allows.
	}
	return p, nil
}

// componentValue returns the value of one covered component of m.
func componentValue(m *Message, c Component) (string, error) {
	src := m
	if c.Req {
		if m.Request == nil {
			return "", fmt.Errorf("%w: %s", ErrNeedRequest, c)
		}
		src = m.Request
	}
	if !strings.HasPrefix(c.Name, "@") {
		if c.Name != strings.ToLower(c.Name) || c.Name == "" {
			return "", fmt.Errorf("%w: field name %q is not lowercase", ErrMalformed, c.Name)
		}
		v, ok := src.Get(c.Name)
		if !ok {
			return "", fmt.Errorf("%w: field %s absent", ErrComponent, c)
		}
		return v, nil
	}
	switch c.Name {
	case "@method":
		if src.Method != "" {
			return src.Method, nil
		}
	case "@authority":
		if src.Authority != "" {
			return strings.ToLower(src.Authority), nil
		}
	case "@scheme":
		if src.Scheme != "" {
			return strings.ToLower(src.Scheme), nil
		}
	case "@path":
		if src.Method != "" || src.Path != "" {
			if src.Path == "" {
				return "/", nil
			}
			return src.Path, nil
		}
	case "@query":
		if src.Method != "" {
			if src.Query == "" {
				return "?", nil
			}
			return src.Query, nil
		}
	case "@request-target":
		if src.Method != "" {
			p := src.Path
			if p == "" {
				p = "/"
			}
			return p + src.Query, nil
		}
	case "@target-uri":
		if src.Scheme != "" && src.Authority != "" {
			p := src.Path
			if p == "" {
				p = "/"
			}
			return strings.ToLower(src.Scheme) + "://" + src.Authority + p + src.Query, nil
		}
	case "@status":
		if !c.Req && src.Status >= 100 && src.Status <= 999 {
			return strconv.Itoa(src.Status), nil
		}
	case "@signature-params":
		return "", fmt.Errorf("%w: @signature-params cannot be covered", ErrMalformed)
	default:
		return "", fmt.Errorf("%w: derived component %s is not supported", ErrComponent, c.Name)
	}
	return "", fmt.Errorf("%w: %s not available in this message", ErrComponent, c)
}

// SignatureBase builds the RFC 9421 §2.5 signature base for the covered
// components of p; sigParams is the serialized "@signature-params" value.
func SignatureBase(m *Message, p Params, sigParams []byte) ([]byte, error) {
	b := make([]byte, 0, 64*len(p.Components)+len(sigParams)+24)
	for _, c := range p.Components {
		v, err := componentValue(m, c)
		if err != nil {
			return nil, err
		}
		if strings.ContainsAny(v, "\r\n") {
			return nil, fmt.Errorf("%w: %s has a line break", ErrMalformed, c)
		}
		if b, err = appendComponent(b, c); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		b = append(b, ": "...)
		b = append(b, v...)
		b = append(b, '\n')
	}
	b = append(b, `"@signature-params": `...)
	return append(b, sigParams...), nil
}

// Signed is what Sign produces: the two field values to add.
type Signed struct {
	Input     string // Signature-Input value: label=(...);params
	Signature string // Signature value: label=:base64:
	Base      []byte // the signature base, for diagnostics and tests
}

// Sign signs m under label with p. sign computes the Ed25519 signature of
// the base (ed25519.Sign or an equivalent).
func Sign(m *Message, label string, p Params, sign func(base []byte) ([]byte, error)) (Signed, error) {
	if _, err := (&sfParser{s: label}).key(); err != nil || len(label) == 0 {
		return Signed{}, fmt.Errorf("httpsig: bad label %q", label)
	}
	in := make([]byte, 0, len(label)+1+32*len(p.Components)+160)
	in = append(in, label...)
	in = append(in, '=')
	in, err := p.appendSerialized(in)
	if err != nil {
		return Signed{}, fmt.Errorf("httpsig: %w", err)
	}
	base, err := SignatureBase(m, p, in[len(label)+1:])
	if err != nil {
		return Signed{}, err
	}
	sig, err := sign(base)
	if err != nil {
		return Signed{}, err
	}
	out := append(make([]byte, 0, len(label)+4+88), label...)
	out = append(out, '=')
	out, _ = appendBareItem(out, sig)
	return Signed{Input: string(in), Signature: string(out), Base: base}, nil
}

// Verified describes one signature that verified.
type Verified struct {
	Label  string
	Params Params
	Base   []byte
}

// Covers reports whether c is among the covered components.
func (v Verified) Covers(c Component) bool {
	for _, x := range v.Params.Components {
		if x == c {
			return true
		}
	}
	return false
}

// VerifyOptions select and check signatures.
type VerifyOptions struct {
	// Key returns the public key for a keyid.
	Key func(keyID string) (ed25519.PublicKey, bool)
	// Label, if set, verifies only that signature; otherwise every
	// signature in the message must verify.
	Label string
	// Now and MaxAge: when MaxAge > 0, created must lie within
	// [Now-MaxAge, Now+Skew]. expires is always checked against Now
	// when Now is set.
	Now    time.Time
	MaxAge time.Duration
	Skew   time.Duration
}

// Verify checks the signatures of m (its Signature-Input and Signature
// fields) and returns those that verified. It fails if any selected
// signature does not.
func Verify(m *Message, o VerifyOptions) ([]Verified, error) {
	inputs, hasIn := m.Get("signature-input")
	sigs, hasSig := m.Get("signature")
	if !hasIn || !hasSig {
		return nil, ErrNoSignature
	}
	inDict, err := ParseDictionary(inputs)
	if err != nil {
		return nil, fmt.Errorf("%w: Signature-Input: %w", ErrMalformed, err)
	}
	sigDict, err := ParseDictionary(sigs)
	if err != nil {
		return nil, fmt.Errorf("%w: Signature: %w", ErrMalformed, err)
	}
	var out []Verified
	for _, in := range inDict {
		if o.Label != "" && in.Key != o.Label {
			continue
		}
		v, err := verifyOne(m, in, sigDict, o)
		if err != nil {
			return out, fmt.Errorf("signature %q: %w", in.Key, err)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		if o.Label != "" {
			return nil, fmt.Errorf("%w: no signature labelled %q", ErrNoSignature, o.Label)
		}
		return nil, ErrNoSignature
	}
	return out, nil
}

func verifyOne(m *Message, in Member, sigDict Dictionary, o VerifyOptions) (Verified, error) {
	v := Verified{Label: in.Key}
	if in.List == nil {
		return v, fmt.Errorf("%w: Signature-Input member is not an inner list", ErrMalformed)
	}
	sm, ok := sigDict.Get(in.Key)
	if !ok || sm.Item == nil {
		return v, fmt.Errorf("%w: no Signature member with this label", ErrMalformed)
	}
	sig, ok := sm.Item.Value.([]byte)
	if !ok {
		return v, fmt.Errorf("%w: Signature member is not a byte sequence", ErrMalformed)
	}
	p, err := paramsFromList(*in.List)
	if err != nil {
		return v, err
	}
	v.Params = p
	if p.Alg != "" && p.Alg != AlgEd25519 {
		return v, fmt.Errorf("%w: alg %q (only ed25519 is accepted)", ErrMalformed, p.Alg)
	}
	if o.Key == nil {
		return v, fmt.Errorf("%w: no keys given", ErrUnknownKey)
	}
	pub, ok := o.Key(p.KeyID)
	if !ok {
		return v, fmt.Errorf("%w: keyid %q", ErrUnknownKey, p.KeyID)
	}
	if !o.Now.IsZero() {
		now := o.Now.Unix()
		if p.Expires != 0 && now > p.Expires {
			return v, fmt.Errorf("%w: expired at %d", ErrExpired, p.Expires)
		}
		if o.MaxAge > 0 {
			if p.Created == 0 {
				return v, fmt.Errorf("%w: no created parameter", ErrExpired)
			}
			if p.Created > now+int64(o.Skew/time.Second) || p.Created < now-int64(o.MaxAge/time.Second) {
				return v, fmt.Errorf("%w: created %d is outside the accepted window", ErrExpired, p.Created)
			}
		}
	}
	sp, err := AppendInnerList(nil, *in.List)
	if err != nil {
		return v, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	base, err := SignatureBase(m, p, sp)
	if err != nil {
		return v, err
	}
	v.Base = base
	if len(sig) != ed25519.SignatureSize || len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, base, sig) {
		return v, ErrBadSignature
	}
	return v, nil
}
