// Package decisionlog owns the signed, hash-chained, append-only log of
// decision records: group-committed appends, segment files, signing keys and
// verification.
//
// Each record is a compact JWS (alg EdDSA, kid = RFC 7638 thumbprint) over
// the record's JSON, one per line in segment files named by their first
// sequence number. Each record's "prev" is the SHA-256 of the previous
// record's JWS signing input, across segments and key rotations.
//
//   - Open / (*Log).Append / Close: the writer. Sync mode acknowledges a
//     record only after it is flushed, with one fdatasync per batch of
//     concurrent appends (per 4 MiB of it), written in place over a segment
//     preallocated with zeros (the last segment may end in zero padding);
//     Async acknowledges once queued. Failures wrap ErrUnavailable and the
//     writer recovers by itself. Open cuts a torn record, or a batch torn by
//     a power loss, off the last segment (keeping the cut bytes in a .torn-*
//     side file) and refuses other damage (ErrCorrupt).
//   - (*Log).Rotate, JWKSHandler, PublicKeys, LoadKeySet, ParseKeySet: keys.
//   - NewReader: the log as a stream, for query, tail -f and consumers.
//   - Verify, VerifyRecord, DecodeRecord, ChainHash: verification.
//
// docs/decision-log.md is the format contract.
package decisionlog
