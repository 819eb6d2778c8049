// Package decisionlog owns the append-only log of decision records: a
// Merkle tree (RFC 6962 / RFC 9162) whose leaves are the records, with one
// signed checkpoint per group commit; segment files, signing keys, receipts
// and verification.
//
// Each record is one JSON line (leaf hash SHA-256(0x00 ‖ line)); after the
// records of each batch (at most MaxBatch) comes one checkpoint line: a C2SP
// tlog-checkpoint signed note (Ed25519, origin = the log's name) with a
// "batch" extension line, and the tree's compact range. Segment files are
// named by their first index.
//
//   - Open / (*Log).Append / Close: the writer. Sync mode acknowledges a
//     record only after it and its checkpoint are flushed, with one
//     fdatasync per batch of concurrent appends (per 4 MiB of it), written
//     in place over a segment preallocated with zeros (the last segment may
//     end in zero padding); Async acknowledges once the checkpoint is
//     signed. Failures wrap ErrUnavailable and the writer recovers by
//     itself. Open covers records written after the last checkpoint with a
//     new one, cuts a torn tail off the last segment (keeping the bytes in
//     a .torn-* side file) and refuses other damage (ErrCorrupt).
//   - Receipt, CompactReceipt, ParseReceipt, VerifyReceipt: the compact
//     receipt (x-agent-receipt).
//   - Checkpoint, OpenCheckpoint, VerifyBatch, Tree, NoteVerifiers: for
//     consumers of shipped batches (the control plane) and witnesses.
//   - (*Log).Rotate, Checkpoint, CheckpointHandler, JWKSHandler, PublicKeys,
//     LoadKeySet, ParseKeySet: keys and the published state.
//   - NewReader, Checkpoints: the log as a stream, for query, tail -f and
//     consumers.
//   - Verify, Prove, Consistency: verification (v1 logs, one JWS per record
//     and a hash chain, are still read and verified).
//
// docs/decision-log.md is the format contract.
package decisionlog
