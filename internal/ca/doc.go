// Package ca owns the agent certificate lifecycle: per-trust-domain CAs under
// <data>/ca/<trust-domain>/, native-profile agent certificates, renewal,
// reissue with new attributes, revocation, CRLs, and the inventory store
// (<data>/inventory.db, pure-Go SQLite, or a PostgreSQL database shared by
// several control-plane instances: WithStore) that records every
// certificate and every lifecycle event, as a signed change log, for
// auditors. Private keys are files in the data directory either way.
//
// An Authority is opened on a data directory and closed when done. Several
// processes may open the same data directory: the store runs in WAL mode with
// a busy timeout and every write is one IMMEDIATE transaction, so the
// revocation server can poll RevocationGeneration while the CLI issues and
// revokes. On PostgreSQL, writers take turns under one advisory lock.
//
// Issuance is atomic: a certificate is returned only after its inventory
// record is committed, so no certificate exists outside the inventory.
package ca
