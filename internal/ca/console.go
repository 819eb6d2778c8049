package ca

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"
)

// The console's sign-in state lives in the inventory's database, so that
// every control-plane instance on one --store shares it and a restart signs
// nobody out: pending one-time sign-in links and browser sessions, each
// under the SHA-256 of its secret (the secret itself is never stored, nor
// anything that would let a reader of the store act as the browser).
// Times are Unix milliseconds.

// ConsoleSession is a signed-in browser as stored.
type ConsoleSession struct {
	Operator string
	Role     string
	Expires  time.Time
}

// PutConsoleLink stores a pending sign-in link under hash, valid until
// expires, and removes the links that expired unused.
func (a *Authority) PutConsoleLink(hash, name, role string, expires, now time.Time) error {
	ctx := context.Background()
	return a.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM console_links WHERE expires <= ?`, now.UnixMilli()); err != nil {
			return a.storeErr(err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO console_links (hash, name, role, expires) VALUES (?, ?, ?, ?)`,
			hash, name, role, expires.UnixMilli()); err != nil {
			return a.storeErr(err)
		}
		return nil
	})
}

// ClaimConsoleLink consumes the link stored under hash: one DELETE …
// RETURNING, so exactly one caller, on any instance, gets it. An unknown,
// used or expired link is ErrNotFound (an expired one is deleted too).
func (a *Authority) ClaimConsoleLink(hash string, now time.Time) (name, role string, err error) {
	var exp int64
	err = a.db.QueryRowContext(context.Background(),
		`DELETE FROM console_links WHERE hash = ? RETURNING name, role, expires`, hash).Scan(&name, &role, &exp)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", ErrNotFound
	}
	if err != nil {
		return "", "", a.storeErr(err)
	}
	if now.UnixMilli() >= exp {
		return "", "", ErrNotFound
	}
	return name, role, nil
}

// PutConsoleSession stores session s under hash. It first purges expired
// sessions and, when max are left, ends those closest to expiry rather than
// refuse the sign-in, so the table stays bounded.
func (a *Authority) PutConsoleSession(hash string, s ConsoleSession, now time.Time, max int) error {
	ctx := context.Background()
	return a.tx(ctx, func(tx *sql.Tx) error {
		if err := bound(ctx, tx, sessionsBound, now, max); err != nil {
			return a.storeErr(err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO console_sessions (hash, operator, role, expires) VALUES (?, ?, ?, ?)`,
			hash, s.Operator, s.Role, s.Expires.UnixMilli()); err != nil {
			return a.storeErr(err)
		}
		return nil
	})
}

// ConsoleOIDC is an OIDC sign-in on its way through the provider: the
// nonce and PKCE verifier of its authorization request, sealed by the
// console under a key only the browser's state gives.
type ConsoleOIDC struct {
	Sealed  string
	Expires time.Time
}

// PutConsoleOIDC stores a pending OIDC sign-in under the hash of its state,
// purging expired ones and, at max, those closest to expiry, so a flood of
// sign-in starts cannot grow the table.
func (a *Authority) PutConsoleOIDC(hash string, p ConsoleOIDC, now time.Time, max int) error {
	ctx := context.Background()
	return a.tx(ctx, func(tx *sql.Tx) error {
		if err := bound(ctx, tx, oidcBound, now, max); err != nil {
			return a.storeErr(err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO console_oidc (hash, sealed, expires) VALUES (?, ?, ?)`,
			hash, p.Sealed, p.Expires.UnixMilli()); err != nil {
			return a.storeErr(err)
		}
		return nil
	})
}

// ClaimConsoleOIDC consumes the pending OIDC sign-in under hash, once, on
// any instance (DELETE … RETURNING); unknown, used or expired is ErrNotFound.
func (a *Authority) ClaimConsoleOIDC(hash string, now time.Time) (ConsoleOIDC, error) {
	var p ConsoleOIDC
	var exp int64
	err := a.db.QueryRowContext(context.Background(),
		`DELETE FROM console_oidc WHERE hash = ? RETURNING sealed, expires`, hash).Scan(&p.Sealed, &exp)
	if errors.Is(err, sql.ErrNoRows) {
		return ConsoleOIDC{}, ErrNotFound
	}
	if err != nil {
		return ConsoleOIDC{}, a.storeErr(err)
	}
	if now.UnixMilli() >= exp {
		return ConsoleOIDC{}, ErrNotFound
	}
	p.Expires = time.UnixMilli(exp).UTC()
	return p, nil
}

// boundQueries bound one console table: purge the expired rows, count the
// rest, end those closest to expiry.
type boundQueries struct{ purge, count, trim string }

var (
	sessionsBound = boundQueries{
		purge: `DELETE FROM console_sessions WHERE expires <= ?`,
		count: `SELECT COUNT(*) FROM console_sessions`,
		trim:  `DELETE FROM console_sessions WHERE hash IN (SELECT hash FROM console_sessions ORDER BY expires, hash LIMIT ?)`,
	}
	oidcBound = boundQueries{
		purge: `DELETE FROM console_oidc WHERE expires <= ?`,
		count: `SELECT COUNT(*) FROM console_oidc`,
		trim:  `DELETE FROM console_oidc WHERE hash IN (SELECT hash FROM console_oidc ORDER BY expires, hash LIMIT ?)`,
	}
)

// bound deletes the expired rows of q's table and, when max are left,
// those closest to expiry, leaving room for one more.
func bound(ctx context.Context, tx *sql.Tx, q boundQueries, now time.Time, max int) error {
	if _, err := tx.ExecContext(ctx, q.purge, now.UnixMilli()); err != nil {
		return err
	}
	var n int
	if err := tx.QueryRowContext(ctx, q.count).Scan(&n); err != nil {
		return err
	}
	if n >= max {
		if _, err := tx.ExecContext(ctx, q.trim, n-max+1); err != nil {
			return err
		}
	}
	return nil
}

// ConsoleSession returns the unexpired session stored under hash, or
// ErrNotFound.
func (a *Authority) ConsoleSession(hash string, now time.Time) (ConsoleSession, error) {
	var s ConsoleSession
	var exp int64
	err := a.db.QueryRowContext(context.Background(),
		`SELECT operator, role, expires FROM console_sessions WHERE hash = ? AND expires > ?`, hash, now.UnixMilli()).
		Scan(&s.Operator, &s.Role, &exp)
	if errors.Is(err, sql.ErrNoRows) {
		return s, ErrNotFound
	}
	if err != nil {
		return s, a.storeErr(err)
	}
	s.Expires = time.UnixMilli(exp).UTC()
	return s, nil
}

// DeleteConsoleSession ends the session stored under hash, on every
// instance.
func (a *Authority) DeleteConsoleSession(hash string) error {
	if _, err := a.db.ExecContext(context.Background(), `DELETE FROM console_sessions WHERE hash = ?`, hash); err != nil {
		return a.storeErr(err)
	}
	return nil
}

// ConsoleKey returns the console's shared secret named name, creating it
// from fresh as the first instance to ask: every instance on one store gets
// the same one. It is hex, of 32 random bytes.
func (a *Authority) ConsoleKey(name string) ([]byte, error) {
	ctx := context.Background()
	b := make([]byte, 32)
	if _, err := io.ReadFull(a.rand, b); err != nil {
		return nil, err
	}
	var key string
	err := a.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO console_keys (name, key) VALUES (?, ?) ON CONFLICT (name) DO NOTHING`,
			name, hex.EncodeToString(b)); err != nil {
			return a.storeErr(err)
		}
		if err := tx.QueryRowContext(ctx, `SELECT key FROM console_keys WHERE name = ?`, name).Scan(&key); err != nil {
			return a.storeErr(err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	k, err := hex.DecodeString(key)
	if err != nil || len(k) != 32 {
		return nil, a.corrupt(fmt.Errorf("console key %q is not 32 bytes of hex", name))
	}
	return k, nil
}
