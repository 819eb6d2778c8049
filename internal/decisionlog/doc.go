// Package decisionlog owns the signed, hash-chained, append-only log of
// decision records: group-committed appends, segment files, signing keys and
// verification.
package decisionlog
