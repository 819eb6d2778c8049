package ca

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/agentauthz/agentauthz/internal/durable"
)

// The change log is the inventory's events table, signed: every event (CA
// created or imported, certificate issued, renewed, reissued, revoked, CRL
// signed, restriction set or lifted, operator certificate issued) is one row
// that carries the SHA-256 of the previous row, its own hash and an Ed25519
// signature by the change-log key (<data>/changelog/, its own key). The row
// and its signature are written in the same transaction as the change they
// describe, so a change is never committed without its signed record, nor
// the reverse. Rows written before the change log was signed have no
// signature; the first signed row chains onto them, so they are covered
// from then on. docs/control-plane.md, "Change log", specifies the format.

const (
	changeLogDir     = "changelog"
	changeLogKeyFile = "ed25519.key"
	changeLogPubFile = "ed25519.pub"
)

// ChangeRecord is the signed content of one change-log row. Its JSON
// encoding, fields in this order, is what is hashed and signed.
type ChangeRecord struct {
	Seq      int64  `json:"seq"`
	At       string `json:"at"`
	Tenant   string `json:"tenant"`
	AgentID  string `json:"agent_id"`
	Serial   string `json:"serial"`
	Event    string `json:"event"`
	Operator string `json:"operator"`
	Detail   string `json:"detail"`
	Prev     string `json:"prev"`
}

func (r *ChangeRecord) bytes() []byte {
	b, _ := json.Marshal(r) // strings and an int: cannot fail
	return b
}

func (r *ChangeRecord) hash() string {
	s := sha256.Sum256(r.bytes())
	return hex.EncodeToString(s[:])
}

type changeSigner struct {
	key ed25519.PrivateKey
	kid string
}

// changeKeyState loads the change-log key once per Authority.
type changeKeyState struct {
	once sync.Once
	s    *changeSigner
	err  error
}

// ChangeLogKeyPath is the public key that verifies the change log.
func ChangeLogKeyPath(dataDir string) string {
	return filepath.Join(dataDir, changeLogDir, changeLogPubFile)
}

// KeyID is the id of an Ed25519 change-log key: 16 hex digits of the SHA-256
// of the raw public key.
func KeyID(pub ed25519.PublicKey) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:8])
}

// changeKey loads (creating on first use) the change-log key.
func (a *Authority) changeKey() (*changeSigner, error) {
	a.ck.once.Do(func() { a.ck.s, a.ck.err = loadOrCreateChangeKey(filepath.Join(a.dir, changeLogDir)) })
	return a.ck.s, a.ck.err
}

func loadOrCreateChangeKey(dir string) (*changeSigner, error) {
	kp := filepath.Join(dir, changeLogKeyFile)
	if _, err := os.Stat(kp); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("change log key: %w", err)
		}
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return nil, err
		}
		if err := durable.WriteFile(filepath.Join(dir, changeLogPubFile), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
			return nil, err
		}
		// Another process may be creating it too: link, never replace, so
		// exactly one key signs; the loser loads the winner's.
		tmp := kp + ".new-" + hex.EncodeToString(pub[:6])
		if err := durable.WriteFile(tmp, []byte(base64.StdEncoding.EncodeToString(priv.Seed())+"\n"), 0o600); err != nil {
			return nil, err
		}
		if err := os.Link(tmp, kp); err != nil && !errors.Is(err, os.ErrExist) {
			os.Remove(tmp)
			return nil, fmt.Errorf("change log key: %w", err)
		}
		os.Remove(tmp)
		if err := durable.SyncDir(dir); err != nil {
			return nil, err
		}
	}
	st, err := os.Stat(kp)
	if err != nil {
		return nil, fmt.Errorf("change log key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, &KeyPermissionError{Path: kp, Mode: st.Mode()}
	}
	b, err := readBounded(kp, 1024)
	if err != nil {
		return nil, fmt.Errorf("change log key: %w", err)
	}
	seed, err := base64.StdEncoding.DecodeString(string(trimNL(b)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("change log key %s: not a base64 Ed25519 seed", kp)
	}
	key := ed25519.NewKeyFromSeed(seed)
	pub := key.Public().(ed25519.PublicKey)
	// The public key file is what verifiers use by default: it must match.
	pubPEM, err := readBounded(filepath.Join(dir, changeLogPubFile), 4096)
	if err == nil {
		if p, perr := ParseChangeLogKey(pubPEM); perr != nil || !p.Equal(pub) {
			err = errors.New("does not match the private key")
		}
	}
	if err != nil {
		der, _ := x509.MarshalPKIXPublicKey(pub)
		if werr := durable.WriteFile(filepath.Join(dir, changeLogPubFile), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); werr != nil {
			return nil, werr
		}
	}
	return &changeSigner{key: key, kid: KeyID(pub)}, nil
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// ParseChangeLogKey reads a PEM "PUBLIC KEY" holding an Ed25519 key.
func ParseChangeLogKey(b []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("not a PEM PUBLIC KEY")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, errors.New("not an Ed25519 key")
	}
	return pub, nil
}

// addEvent appends one signed row to the change log inside tx, which holds
// the write lock, so rows chain in commit order.
func (a *Authority) addEvent(tx *sql.Tx, at time.Time, tenant, agentID, serial, event, operator, detail string) error {
	s, err := a.changeKey()
	if err != nil {
		return fmt.Errorf("record event %s: %w", event, err)
	}
	var last int64
	var lastHash sql.NullString
	err = tx.QueryRow(`SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1`).Scan(&last, &lastHash)
	prev := ""
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return fmt.Errorf("record event %s: %w", event, err)
	case lastHash.Valid:
		prev = lastHash.String
	default:
		// The previous rows predate signing: chain onto their hashes.
		if prev, err = legacyHead(tx); err != nil {
			return fmt.Errorf("record event %s: %w", event, err)
		}
	}
	r := ChangeRecord{Seq: last + 1, At: fmtEvent(at), Tenant: tenant, AgentID: agentID, Serial: serial, Event: event,
		Operator: operator, Detail: detail, Prev: prev}
	b := r.bytes()
	sum := sha256.Sum256(b)
	sig := ed25519.Sign(s.key, b)
	_, err = tx.Exec(`INSERT INTO events (seq, at, tenant, agent_id, serial, event, operator, detail, prev, hash, kid, sig)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.Seq, r.At, tenant, agentID, serial, event, operator, detail, prev, hex.EncodeToString(sum[:]), s.kid,
		base64.RawURLEncoding.EncodeToString(sig))
	if err != nil {
		return fmt.Errorf("record event %s: %w", event, err)
	}
	return nil
}

// legacyHead is the hash chain over the unsigned rows, computed as for
// signed ones.
func legacyHead(tx *sql.Tx) (string, error) {
	rows, err := tx.Query(`SELECT seq, at, tenant, agent_id, serial, event, operator, detail FROM events ORDER BY seq`)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	prev := ""
	for rows.Next() {
		var r ChangeRecord
		if err := rows.Scan(&r.Seq, &r.At, &r.Tenant, &r.AgentID, &r.Serial, &r.Event, &r.Operator, &r.Detail); err != nil {
			return "", err
		}
		r.Prev = prev
		prev = r.hash()
	}
	return prev, rows.Err()
}

// ChangeLogProblem is the first damage VerifyChangeLog found.
type ChangeLogProblem struct {
	Seq    int64  `json:"seq"`
	Kind   string `json:"kind"` // missing, modified, reordered, bad_signature, unsigned, unknown_key
	Detail string `json:"detail"`
}

// ChangeLogResult is what VerifyChangeLog checked.
type ChangeLogResult struct {
	Events   int64             `json:"events"`
	Signed   int64             `json:"signed"`
	Unsigned int64             `json:"unsigned_before_signing"`
	LastSeq  int64             `json:"last_seq"`
	Head     string            `json:"head"`
	Problem  *ChangeLogProblem `json:"problem,omitempty"`
}

// VerifyChangeLog checks every row of the change log: sequence numbers from 1
// without a gap, each row's hash over its content and the previous row's
// hash, and each signed row's signature by pub. Unsigned rows are accepted
// only before the first signed one. Deleting the newest rows cannot be seen
// from the log alone: compare Head and LastSeq with a copy kept elsewhere.
func (a *Authority) VerifyChangeLog(pub ed25519.PublicKey) (*ChangeLogResult, error) {
	rows, err := a.db.Query(`SELECT seq, at, tenant, agent_id, serial, event, operator, detail, prev, hash, kid, sig FROM events ORDER BY seq`)
	if err != nil {
		return nil, a.storeErr(err)
	}
	defer rows.Close()
	res := &ChangeLogResult{}
	kid := KeyID(pub)
	prev := ""
	fail := func(seq int64, kind, format string, args ...any) (*ChangeLogResult, error) {
		res.Problem = &ChangeLogProblem{Seq: seq, Kind: kind, Detail: fmt.Sprintf(format, args...)}
		return res, nil
	}
	for rows.Next() {
		var r ChangeRecord
		var sp, sh, sk, ss sql.NullString
		if err := rows.Scan(&r.Seq, &r.At, &r.Tenant, &r.AgentID, &r.Serial, &r.Event, &r.Operator, &r.Detail, &sp, &sh, &sk, &ss); err != nil {
			return nil, a.storeErr(err)
		}
		want := res.LastSeq + 1
		switch {
		case r.Seq > want:
			return fail(want, "missing", "rows %d..%d are missing", want, r.Seq-1)
		case r.Seq < want:
			return fail(r.Seq, "reordered", "seq %d after %d", r.Seq, res.LastSeq)
		}
		r.Prev = prev
		if !sh.Valid {
			if res.Signed > 0 {
				return fail(r.Seq, "unsigned", "an unsigned row after signed ones")
			}
			res.Unsigned++
		} else {
			if sp.String != prev {
				return fail(r.Seq, "modified", "prev %.16s… does not match the previous row's hash %.16s…", sp.String, prev)
			}
			h := r.hash()
			if sh.String != h {
				return fail(r.Seq, "modified", "content does not match its hash")
			}
			if sk.String != kid {
				return fail(r.Seq, "unknown_key", "signed by key %s, not the trusted %s", sk.String, kid)
			}
			sig, err := base64.RawURLEncoding.Strict().DecodeString(ss.String)
			if err != nil || !ed25519.Verify(pub, r.bytes(), sig) {
				return fail(r.Seq, "bad_signature", "the signature does not verify")
			}
			res.Signed++
		}
		prev = r.hash()
		res.Events++
		res.LastSeq = r.Seq
		res.Head = prev
	}
	if err := rows.Err(); err != nil {
		return nil, a.storeErr(err)
	}
	return res, nil
}
