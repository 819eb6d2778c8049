package ca

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/agentauthz/agentauthz/internal/durable"
	"github.com/agentauthz/agentauthz/internal/jsonstring"
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
// encoding (bytes), fields in this order, is what is hashed and signed.
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

// bytes is the row's JSON object as encoding/json wrote it up to go1.26,
// by a rule that does not move with the toolchain (internal/jsonstring,
// with HTML escaping): a row is encoded again each time it is verified, and
// go1.27's encoding/json would write the invalid UTF-8 of an old SQLite row
// differently (a raw U+FFFD, not \ufffd) and fail its hash. New rows carry
// no invalid UTF-8 (addEvent).
func (r *ChangeRecord) bytes() []byte {
	b := make([]byte, 0, 128+len(r.At)+len(r.Tenant)+len(r.AgentID)+len(r.Serial)+len(r.Event)+len(r.Operator)+len(r.Detail)+len(r.Prev))
	b = append(b, `{"seq":`...)
	b = strconv.AppendInt(b, r.Seq, 10)
	for _, m := range [...]struct{ key, val string }{
		{`,"at":`, r.At}, {`,"tenant":`, r.Tenant}, {`,"agent_id":`, r.AgentID}, {`,"serial":`, r.Serial},
		{`,"event":`, r.Event}, {`,"operator":`, r.Operator}, {`,"detail":`, r.Detail}, {`,"prev":`, r.Prev},
	} {
		b = append(b, m.key...)
		b = jsonstring.AppendHTML(b, m.val)
	}
	return append(b, '}')
}

func (r *ChangeRecord) hash() string {
	s := sha256.Sum256(r.bytes())
	return hex.EncodeToString(s[:])
}

type changeSigner struct {
	key ed25519.PrivateKey
	kid string
}

// changeKeyState caches the change-log key of an Authority; it is loaded
// again when the log names another key (rotated by another process).
type changeKeyState struct {
	mu sync.Mutex
	s  *changeSigner
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

// ErrChangeLogKey means this data directory does not hold the private key
// the change log is signed with now: on a shared PostgreSQL store, another
// instance created or rotated it and its changelog/ directory must be copied
// here. Nothing is changed without it.
var ErrChangeLogKey = errors.New("the change log's current signing key is not in this data directory")

// changeKey returns the key that must sign the next row: the one whose id
// is want (the log's current key), or, on a log without signed rows (want
// ""), the data directory's key, created on first use.
func (a *Authority) changeKey(want string) (*changeSigner, error) {
	a.ck.mu.Lock()
	defer a.ck.mu.Unlock()
	if a.ck.s != nil && (want == "" || a.ck.s.kid == want) {
		return a.ck.s, nil
	}
	dir := filepath.Join(a.dir, changeLogDir)
	if want != "" {
		// A rotation committed but not finished on disk (a crash between
		// the two) is finished now.
		if err := finishRotation(dir, want); err != nil {
			return nil, err
		}
		if _, err := os.Stat(filepath.Join(dir, changeLogKeyFile)); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: the log is signed by key %s and %s does not exist (copy changelog/ from the instance that created it)",
				ErrChangeLogKey, want, filepath.Join(dir, changeLogKeyFile))
		}
	}
	s, err := loadOrCreateChangeKey(dir)
	if err != nil {
		return nil, err
	}
	if want != "" && s.kid != want {
		return nil, fmt.Errorf("%w: the log is signed by key %s, %s holds key %s (copy changelog/ from the instance that rotated it)",
			ErrChangeLogKey, want, filepath.Join(dir, changeLogKeyFile), s.kid)
	}
	a.ck.s = s
	return s, nil
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
	// Invalid UTF-8 would be signed as \ufffd, which stands for any bad
	// byte: the row would not bind what it stores. Refused, whoever calls.
	for _, f := range [...]struct{ name, val string }{
		{"tenant", tenant}, {"agent_id", agentID}, {"serial", serial}, {"event", event}, {"operator", operator}, {"detail", detail},
	} {
		if !utf8.ValidString(f.val) {
			return fieldf(f.name, "record event %s: the %s is not valid UTF-8", event, f.name)
		}
	}
	var last int64
	var lastHash, lastKid sql.NullString
	var lastEvent, lastDetail string
	err := tx.QueryRow(`SELECT seq, hash, kid, event, detail FROM events ORDER BY seq DESC LIMIT 1`).
		Scan(&last, &lastHash, &lastKid, &lastEvent, &lastDetail)
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
	// The key that signs this row is the one that signed the last, or the
	// one the last introduced if it was a rotation.
	want := lastKid.String
	if lastEvent == EventChangeLogKeyRotated {
		if k, err := rotatedKey(lastDetail); err == nil {
			want = KeyID(k)
		}
	}
	s, err := a.changeKey(want)
	if err != nil {
		return fmt.Errorf("record event %s: %w", event, err)
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
	Kind   string `json:"kind"` // missing, modified, reordered, bad_signature, unsigned, unknown_key, retired_key, bad_rotation
	Detail string `json:"detail"`
}

// ChangeLogResult is what VerifyChangeLog checked.
type ChangeLogResult struct {
	Events   int64             `json:"events"`
	Signed   int64             `json:"signed"`
	Unsigned int64             `json:"unsigned_before_signing"`
	LastSeq  int64             `json:"last_seq"`
	Head     string            `json:"head"`
	Keys     []string          `json:"keys"` // ids of the keys that signed, in order (one more per rotation)
	Problem  *ChangeLogProblem `json:"problem,omitempty"`
}

// VerifyChangeLog checks every row of the change log: sequence numbers from 1
// without a gap, each row's hash over its content and the previous row's
// hash, and each signed row's signature. The first signed row must be signed
// by one of the trusted keys; after that every row is signed by the key of
// the row before it, or, after a rotation row, by the key that row names
// (the old key may sign nothing more). Unsigned rows are accepted only
// before the first signed one. Deleting the newest rows cannot be seen from
// the log alone: compare Head and LastSeq with a copy kept elsewhere.
func (a *Authority) VerifyChangeLog(trusted ...ed25519.PublicKey) (*ChangeLogResult, error) {
	rows, err := a.db.Query(`SELECT seq, at, tenant, agent_id, serial, event, operator, detail, prev, hash, kid, sig FROM events ORDER BY seq`)
	if err != nil {
		return nil, a.storeErr(err)
	}
	defer rows.Close()
	res := &ChangeLogResult{Keys: []string{}}
	keys := make(map[string]ed25519.PublicKey, len(trusted))
	var ids []string
	for _, k := range trusted {
		keys[KeyID(k)] = k
		ids = append(ids, KeyID(k))
	}
	current := ""                 // the key that must sign the next row, from the first signed row on
	retired := map[string]int64{} // key id → seq of the rotation that retired it
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
			kid := sk.String
			switch at, wasRetired := retired[kid]; {
			case current != "" && kid != current && wasRetired:
				return fail(r.Seq, "retired_key", "signed by key %s, retired by the rotation at seq %d (the current key is %s)", kid, at, current)
			case current != "" && kid != current:
				return fail(r.Seq, "unknown_key", "signed by key %s, not the log's current key %s", kid, current)
			}
			pub, ok := keys[kid]
			if !ok {
				return fail(r.Seq, "unknown_key", "signed by key %s, not a trusted key (%s)", kid, strings.Join(ids, ", "))
			}
			sig, err := base64.RawURLEncoding.Strict().DecodeString(ss.String)
			if err != nil || !ed25519.Verify(pub, r.bytes(), sig) {
				return fail(r.Seq, "bad_signature", "the signature does not verify")
			}
			if current == "" {
				res.Keys = append(res.Keys, kid)
			}
			current = kid
			if r.Event == EventChangeLogKeyRotated {
				nk, err := rotatedKey(r.Detail)
				if err != nil {
					return fail(r.Seq, "bad_rotation", "key rotation: %v", err)
				}
				nid := KeyID(nk)
				if _, old := retired[nid]; old || nid == kid {
					return fail(r.Seq, "bad_rotation", "key rotation to key %s, which signed before", nid)
				}
				retired[kid] = r.Seq
				keys[nid] = nk
				current = nid
				res.Keys = append(res.Keys, nid)
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
