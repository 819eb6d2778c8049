package identity

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseXFCC(t *testing.T) {
	tests := []struct {
		name   string
		header string
		want   []XFCCElement
	}{
		{"empty", "", nil},
		{"blank", "  ", nil},
		{"envoy single",
			`By=spiffe://mesh/proxy;Hash=abc123;Cert="-----BEGIN%20CERTIFICATE-----%0AMIIB%0A-----END%20CERTIFICATE-----%0A";Subject="CN=bot,OU=trust:L2";URI=spiffe://example.test/agent/bot`,
			[]XFCCElement{{
				By:      []string{"spiffe://mesh/proxy"},
				Hash:    "abc123",
				Cert:    "-----BEGIN%20CERTIFICATE-----%0AMIIB%0A-----END%20CERTIFICATE-----%0A",
				Subject: "CN=bot,OU=trust:L2",
				URI:     []string{"spiffe://example.test/agent/bot"},
			}}},
		{"keys are case-insensitive", `by=a;hAsH=b;CERT=c;chain=d;SUBJECT=e;uri=f;Dns=g`,
			[]XFCCElement{{By: []string{"a"}, Hash: "b", Cert: "c", Chain: "d", Subject: "e", URI: []string{"f"}, DNS: []string{"g"}}}},
		{"escaped quote", `Subject="CN=\"quoted\", O=x;y"`,
			[]XFCCElement{{Subject: `CN="quoted", O=x;y`}}},
		{"multi-valued keys", `URI=a;URI=b;DNS=c;DNS=d;By=e;By=f`,
			[]XFCCElement{{URI: []string{"a", "b"}, DNS: []string{"c", "d"}, By: []string{"e", "f"}}}},
		{"several elements", `Hash=1;URI=a,Hash=2;URI=b, Hash=3 ; URI="c"`,
			[]XFCCElement{{Hash: "1", URI: []string{"a"}}, {Hash: "2", URI: []string{"b"}}, {Hash: "3", URI: []string{"c"}}}},
		{"comma inside quotes does not split", `Subject="a,b";Hash=1,Hash=2`,
			[]XFCCElement{{Subject: "a,b", Hash: "1"}, {Hash: "2"}}},
		{"empty value", `Hash=;URI=`, []XFCCElement{{URI: []string{""}}}},
		{"trailing semicolon", `Hash=1;`, []XFCCElement{{Hash: "1"}}},
		{"equals in unquoted value", `Cert=abc%3D=`, []XFCCElement{{Cert: "abc%3D="}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseXFCC(tt.header)
			if err != nil {
				t.Fatalf("ParseXFCC: %v", err)
			}
			if !reflect.DeepEqual(normEls(got), normEls(tt.want)) {
				t.Fatalf("got  %#v\nwant %#v", got, tt.want)
			}
			last, ok, err := lastXFCCElement(tt.header)
			if err != nil || ok != (len(tt.want) > 0) {
				t.Fatalf("lastXFCCElement: ok=%v err=%v", ok, err)
			}
			if ok && !reflect.DeepEqual(normEl(last), normEl(tt.want[len(tt.want)-1])) {
				t.Fatalf("last: got %#v want %#v", last, tt.want[len(tt.want)-1])
			}
		})
	}
}

func TestParseXFCCMalformed(t *testing.T) {
	many := strings.Repeat("Hash=1,", MaxXFCCElements) + "Hash=1"
	tests := []struct{ name, header string }{
		{"unmatched quote", `Hash=1;Subject="CN=x`},
		{"unmatched quote after escape", `Subject="CN=x\"`},
		{"too big", "Cert=" + strings.Repeat("a", MaxXFCCBytes)},
		{"too many elements", many},
		{"100 elements", strings.Repeat("Hash=1,", 99) + "Hash=1"},
		{"unknown key", `Hash=1;Evil=2`},
		{"no equals", `Hash`},
		{"empty key", `=x`},
		{"empty element", `Hash=1,,Hash=2`},
		{"trailing comma", `Hash=1,`},
		{"leading comma", `,Hash=1`},
		{"double semicolon", `Hash=1;;URI=a`},
		{"text after quote", `Subject="a"b;Hash=1`},
		{"quote in unquoted value", `Hash=a"b`},
		{"repeated Cert", `Cert=a;Cert=b`},
		{"repeated hash any case", `Hash=a;HASH=b`},
		{"too many pairs", strings.Repeat("URI=a;", MaxXFCCPairsPerElt) + "URI=a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseXFCC(tt.header); !errors.Is(err, ErrMalformedXFCC) {
				t.Fatalf("ParseXFCC(%.60q) err = %v, want ErrMalformedXFCC", tt.header, err)
			}
			if _, _, err := lastXFCCElement(tt.header); !errors.Is(err, ErrMalformedXFCC) {
				t.Fatalf("lastXFCCElement(%.60q) err = %v, want ErrMalformedXFCC", tt.header, err)
			}
		})
	}
}

func TestParseXFCCLimitsAccepted(t *testing.T) {
	h := strings.Repeat("Hash=1,", MaxXFCCElements-1) + "Hash=last"
	els, err := ParseXFCC(h)
	if err != nil || len(els) != MaxXFCCElements || els[len(els)-1].Hash != "last" {
		t.Fatalf("%d elements: err=%v len=%d", MaxXFCCElements, err, len(els))
	}
}

// encodeXFCC writes elements in Envoy's form, quoting every value.
func encodeXFCC(els []XFCCElement) string {
	var b strings.Builder
	q := func(k, v string) {
		if b.Len() > 0 && !strings.HasSuffix(b.String(), ",") {
			b.WriteByte(';')
		}
		b.WriteString(k + `="` + strings.ReplaceAll(v, `"`, `\"`) + `"`)
	}
	for i, el := range els {
		if i > 0 {
			b.WriteByte(',')
		}
		for _, v := range el.By {
			q("By", v)
		}
		q("Hash", el.Hash) // always, so that no element is empty
		for k, v := range map[string]string{"Cert": el.Cert, "Chain": el.Chain, "Subject": el.Subject} {
			if v != "" {
				q(k, v)
			}
		}
		for _, v := range el.URI {
			q("URI", v)
		}
		for _, v := range el.DNS {
			q("DNS", v)
		}
	}
	return b.String()
}

func normEls(els []XFCCElement) []XFCCElement {
	if len(els) == 0 {
		return nil
	}
	out := make([]XFCCElement, len(els))
	for i, e := range els {
		out[i] = normEl(e)
	}
	return out
}

// normEl makes empty slices nil so that DeepEqual compares content.
func normEl(e XFCCElement) XFCCElement {
	n := func(s []string) []string {
		if len(s) == 0 {
			return nil
		}
		return s
	}
	e.By, e.URI, e.DNS = n(e.By), n(e.URI), n(e.DNS)
	return e
}
