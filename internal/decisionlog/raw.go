package decisionlog

import (
	"fmt"
	"strings"
)

// NextLine is Next without decoding: Entry.Raw is the next record line
// (checkpoint lines are skipped) and Entry.Record is nil. Damage is
// reported as Next reports it. A reader that needs only a few fields of
// every record (policy simulation) decodes them itself and hands a line it
// cannot take to DecodeRecordLine or DecodeRecord, as Next would.
func (r *Reader) NextLine() (Entry, error) {
	for {
		l, err := r.nextLine(false)
		if err != nil {
			return Entry{}, err
		}
		if l.hasNUL {
			return Entry{Segment: l.seg, Line: l.num}, fmt.Errorf("%s line %d: %w: %s", l.seg, l.num, ErrMalformed, nulDetail(l))
		}
		if l.tooLong {
			return Entry{Segment: l.seg, Line: l.num}, fmt.Errorf("%s line %d: %w: longer than %d bytes", l.seg, l.num, ErrMalformed, MaxRecordBytes)
		}
		if strings.HasPrefix(l.text, checkpointPrefix) {
			continue
		}
		return Entry{Raw: l.text, Segment: l.seg, Line: l.num}, nil
	}
}

// DecodeLine decodes a record line of either format (v2 JSON, v1 JWS)
// strictly, without verifying it: what Next does with a line.
func DecodeLine(text string) (*Record, error) { return decodeLine(text) }

// ParseRecordHead reads index, log and kind from the fixed head of a v2
// record line, {"index":N,"log":"…","kind":"…", as DecodeRecordLine checks
// it; it does not look at the rest of the line.
func ParseRecordHead(line []byte) (index uint64, log, kind string, err error) {
	h, err := parseRecordHead(line)
	return h.index, h.log, h.kind, err
}
