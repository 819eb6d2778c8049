package identity

import (
	"errors"
	"fmt"
	"strings"
)

// Limits on the x-forwarded-client-cert header. A header beyond them is
// malformed rather than truncated: a truncated header would silently drop the
// rightmost element, which is the only one that counts.
const (
	MaxXFCCBytes       = 64 << 10 // whole header
	MaxXFCCElements    = 32       // proxies that appended an element
	MaxXFCCPairsPerElt = 128      // key=value pairs in one element
)

// ErrMalformedXFCC is wrapped by every x-forwarded-client-cert syntax error.
var ErrMalformedXFCC = errors.New("malformed x-forwarded-client-cert")

// XFCCElement is one element of an x-forwarded-client-cert header: what one
// proxy said about the client certificate it saw. Quoting and \" escapes are
// removed; Cert and Chain are left URL-encoded exactly as forwarded, because
// the verifier caches by that exact string.
type XFCCElement struct {
	By      []string // URI SANs of the proxy's own certificate
	Hash    string   // hex SHA-256 of the client certificate DER
	Cert    string   // URL-encoded PEM of the client certificate
	Chain   string   // URL-encoded PEM of the client chain, leaf first
	Subject string   // subject DN of the client certificate
	URI     []string // URI SANs of the client certificate
	DNS     []string // DNS SANs of the client certificate
}

// xfcc key bits, for duplicate detection of single-valued keys.
const (
	keyHash = 1 << iota
	keyCert
	keyChain
	keySubject
)

// ParseXFCC parses an x-forwarded-client-cert header to Envoy's grammar:
// elements separated by ',', key=value pairs by ';', values optionally
// double-quoted with \" escaping a quote, keys By, Hash, Cert, Chain, Subject,
// URI and DNS in any case. Optional spaces or tabs around pairs are allowed
// (a proxy joining repeated headers writes ", "). An unknown key, a repeated
// single-valued key, an empty element, an unmatched quote or a header beyond
// the limits above is an error wrapping ErrMalformedXFCC. An empty header
// yields no elements and no error.
//
// Only the last element is trustworthy: every earlier one may have been
// written by the client itself.
func ParseXFCC(header string) ([]XFCCElement, error) {
	if err := checkXFCCSize(header); err != nil {
		return nil, err
	}
	if isBlank(header) {
		return nil, nil
	}
	var out []XFCCElement
	for i := 0; ; {
		if len(out) == MaxXFCCElements {
			return nil, fmt.Errorf("%w: more than %d elements", ErrMalformedXFCC, MaxXFCCElements)
		}
		var el XFCCElement
		next, more, err := scanXFCCElement(header, i, &el)
		if err != nil {
			return nil, err
		}
		out = append(out, el)
		if !more {
			return out, nil
		}
		i = next
	}
}

// lastXFCCElement validates the whole header like ParseXFCC but keeps only
// the rightmost element, reusing one element's slices so that the hot path
// allocates at most once per multi-valued key. ok is false for an empty
// header.
func lastXFCCElement(header string) (el XFCCElement, ok bool, err error) {
	if err := checkXFCCSize(header); err != nil {
		return XFCCElement{}, false, err
	}
	if isBlank(header) {
		return XFCCElement{}, false, nil
	}
	for i, n := 0, 0; ; n++ {
		if n == MaxXFCCElements {
			return XFCCElement{}, false, fmt.Errorf("%w: more than %d elements", ErrMalformedXFCC, MaxXFCCElements)
		}
		el = XFCCElement{By: el.By[:0], URI: el.URI[:0], DNS: el.DNS[:0]}
		next, more, err := scanXFCCElement(header, i, &el)
		if err != nil {
			return XFCCElement{}, false, err
		}
		if !more {
			return el, true, nil
		}
		i = next
	}
}

func checkXFCCSize(header string) error {
	if len(header) > MaxXFCCBytes {
		return fmt.Errorf("%w: header is %d bytes, limit %d", ErrMalformedXFCC, len(header), MaxXFCCBytes)
	}
	return nil
}

// scanXFCCElement parses the element that starts at h[i:] into el. It returns
// the index just after the ',' that ends the element and more=true, or
// more=false when the element ends the header.
func scanXFCCElement(h string, i int, el *XFCCElement) (next int, more bool, err error) {
	var seen, pairs int
	for {
		i = skipOWS(h, i)
		if pairs == MaxXFCCPairsPerElt {
			return 0, false, fmt.Errorf("%w: more than %d pairs in one element", ErrMalformedXFCC, MaxXFCCPairsPerElt)
		}
		// Key: letters up to '='.
		ks := i
		for i < len(h) && isASCIILetter(h[i]) {
			i++
		}
		key := h[ks:i]
		if key == "" || i == len(h) || h[i] != '=' {
			return 0, false, fmt.Errorf("%w: expected key= at offset %d", ErrMalformedXFCC, ks)
		}
		i++ // '='
		var val string
		if i < len(h) && h[i] == '"' {
			val, i, err = scanQuoted(h, i)
			if err != nil {
				return 0, false, err
			}
			i = skipOWS(h, i)
			if i < len(h) && h[i] != ';' && h[i] != ',' {
				return 0, false, fmt.Errorf("%w: text after closing quote at offset %d", ErrMalformedXFCC, i)
			}
		} else {
			end := indexSep(h, i)
			val = trimOWSRight(h[i:end])
			if strings.IndexByte(val, '"') >= 0 {
				return 0, false, fmt.Errorf("%w: quote inside unquoted value at offset %d", ErrMalformedXFCC, i)
			}
			i = end
		}
		if err := setXFCCKey(el, key, val, &seen); err != nil {
			return 0, false, err
		}
		pairs++
		if i == len(h) {
			return i, false, nil
		}
		sep := h[i]
		i++
		if sep == ',' {
			if isBlank(h[i:]) {
				return 0, false, fmt.Errorf("%w: empty element at end", ErrMalformedXFCC)
			}
			return i, true, nil
		}
		// ';' must be followed by another pair; a trailing ';' is tolerated
		// only if the element ends right there.
		j := skipOWS(h, i)
		if j == len(h) {
			return j, false, nil
		}
		if h[j] == ',' {
			if isBlank(h[j+1:]) {
				return 0, false, fmt.Errorf("%w: empty element at end", ErrMalformedXFCC)
			}
			return j + 1, true, nil
		}
	}
}

// scanQuoted reads a quoted value starting at the opening quote h[i]. \" is
// an escaped quote; every other byte is literal (Envoy escapes nothing else).
func scanQuoted(h string, i int) (val string, next int, err error) {
	start := i + 1
	escaped := false
	for p := start; ; {
		k := strings.IndexByte(h[p:], '"')
		if k < 0 {
			return "", 0, fmt.Errorf("%w: unmatched quote at offset %d", ErrMalformedXFCC, i)
		}
		q := p + k
		if q > start && h[q-1] == '\\' {
			escaped = true
			p = q + 1
			continue
		}
		val = h[start:q]
		if escaped {
			val = strings.ReplaceAll(val, `\"`, `"`)
		}
		return val, q + 1, nil
	}
}

func setXFCCKey(el *XFCCElement, key, val string, seen *int) error {
	single := func(bit int, dst *string) error {
		if *seen&bit != 0 {
			return fmt.Errorf("%w: key %s repeated in one element", ErrMalformedXFCC, key)
		}
		*seen |= bit
		*dst = val
		return nil
	}
	switch {
	case strings.EqualFold(key, "Cert"):
		return single(keyCert, &el.Cert)
	case strings.EqualFold(key, "Chain"):
		return single(keyChain, &el.Chain)
	case strings.EqualFold(key, "Hash"):
		return single(keyHash, &el.Hash)
	case strings.EqualFold(key, "Subject"):
		return single(keySubject, &el.Subject)
	case strings.EqualFold(key, "URI"):
		el.URI = append(el.URI, val)
	case strings.EqualFold(key, "By"):
		el.By = append(el.By, val)
	case strings.EqualFold(key, "DNS"):
		el.DNS = append(el.DNS, val)
	default:
		return fmt.Errorf("%w: unknown key %.40q", ErrMalformedXFCC, key)
	}
	return nil
}

// indexSep returns the index of the next ';' or ',' at or after i, or len(h).
// It uses IndexByte (vectorised) because Cert= values are kilobytes long.
func indexSep(h string, i int) int {
	rest := h[i:]
	end := len(rest)
	if k := strings.IndexByte(rest, ';'); k >= 0 {
		end = k
	}
	if k := strings.IndexByte(rest[:end], ','); k >= 0 {
		end = k
	}
	return i + end
}

func skipOWS(h string, i int) int {
	for i < len(h) && (h[i] == ' ' || h[i] == '\t') {
		i++
	}
	return i
}

func trimOWSRight(s string) string {
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

func isBlank(s string) bool { return skipOWS(s, 0) == len(s) }

func isASCIILetter(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') }
