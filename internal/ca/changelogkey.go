package ca

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"database/sql"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/agentauthz/agentauthz/internal/durable"
)

// Rotating the change-log key is itself a change-log row: the event
// changelog_key_rotated, signed by the old key, whose detail names the new
// public key. Every later row is signed by the new key, and the old one may
// sign nothing more. A verifier that trusts the first key therefore trusts
// every key after it; the data directory keeps the retired public keys in
// changelog/retired/<kid>.pub so that its default key set verifies the whole
// log. The new private key is written (changelog/ed25519.key.next-<kid>)
// before the row is committed and moved into place after: a crash between the
// two is finished by the next change, which finds the log naming that key.

// EventChangeLogKeyRotated is the change-log event of a key rotation.
const EventChangeLogKeyRotated = "changelog_key_rotated"

const (
	changeLogNextPrefix = changeLogKeyFile + ".next-"
	changeLogRetiredDir = "retired"
)

// KeyRotation is a committed change-log key rotation.
type KeyRotation struct {
	Seq    int64  `json:"seq"`
	OldKID string `json:"old_kid"`
	NewKID string `json:"new_kid"`
}

// RotateChangeLogKey replaces the change-log key: it appends the rotation,
// signed by the current key, then makes the new key the data directory's.
func (a *Authority) RotateChangeLogKey(operator, reason string) (*KeyRotation, error) {
	if err := validateOperator(operator); err != nil {
		return nil, err
	}
	if strings.TrimSpace(reason) == "" {
		return nil, fieldf("reason", "a key rotation needs a reason")
	}
	if err := validateText("reason", reason, maxReasonLen); err != nil {
		return nil, err
	}
	pub, priv, err := ed25519.GenerateKey(a.rand)
	if err != nil {
		return nil, fmt.Errorf("generate change-log key: %w", err)
	}
	dir := filepath.Join(a.dir, changeLogDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("change log key: %w", err)
	}
	rot := &KeyRotation{NewKID: KeyID(pub)}
	// Kept even if the commit reports an error: the commit may have
	// happened, and then the log needs this key.
	if err := durable.WriteFile(filepath.Join(dir, changeLogNextPrefix+rot.NewKID),
		[]byte(base64.StdEncoding.EncodeToString(priv.Seed())+"\n"), 0o600); err != nil {
		return nil, err
	}
	detail := fmt.Sprintf("new_kid=%s new_key=%s reason=%s", rot.NewKID, base64.StdEncoding.EncodeToString(pub), reason)
	err = a.tx(context.Background(), func(tx *sql.Tx) error {
		if err := a.addEvent(tx, a.now(), "", "", "", EventChangeLogKeyRotated, operator, detail); err != nil {
			return err
		}
		return tx.QueryRow(`SELECT seq, kid FROM events ORDER BY seq DESC LIMIT 1`).Scan(&rot.Seq, &rot.OldKID)
	})
	if err != nil {
		return nil, err
	}
	if err := finishRotation(dir, rot.NewKID); err != nil {
		return nil, fmt.Errorf("rotation committed at seq %d; the next change finishes installing the key: %w", rot.Seq, err)
	}
	a.ck.mu.Lock()
	a.ck.s = nil
	a.ck.mu.Unlock()
	return rot, nil
}

// rotatedKey is the new public key a rotation row's detail names.
func rotatedKey(detail string) (ed25519.PublicKey, error) {
	for _, f := range strings.Fields(detail) {
		if v, ok := strings.CutPrefix(f, "new_key="); ok {
			b, err := base64.StdEncoding.Strict().DecodeString(v)
			if err != nil || len(b) != ed25519.PublicKeySize {
				return nil, errors.New("new_key is not a base64 Ed25519 public key")
			}
			return ed25519.PublicKey(b), nil
		}
		if strings.HasPrefix(f, "reason=") {
			break // free text from here on
		}
	}
	return nil, errors.New("no new_key")
}

// finishRotation makes the pending key want the data directory's key, if it
// is pending here: the current key's public half goes to retired/, the new
// key and its public key take the usual names. Nothing to do when
// ed25519.key is already want or no such pending key exists. Another process
// on the same data directory (the running control plane and the CLI that
// rotated) may finish the same rotation at the same moment: a pending file
// that vanishes midway is fine when ed25519.key then holds want.
func finishRotation(dir, want string) error {
	next := filepath.Join(dir, changeLogNextPrefix+want)
	kp := filepath.Join(dir, changeLogKeyFile)
	installed := func(err error) error {
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if cur, cerr := readSeedFile(kp); cerr == nil && KeyID(cur.Public().(ed25519.PublicKey)) == want {
			return nil
		}
		return err
	}
	if _, err := os.Stat(next); err != nil {
		return nil
	}
	if cur, err := readSeedFile(kp); err == nil {
		oldPub := cur.Public().(ed25519.PublicKey)
		if KeyID(oldPub) == want {
			if err := os.Remove(next); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			return nil
		}
		if err := os.MkdirAll(filepath.Join(dir, changeLogRetiredDir), 0o700); err != nil {
			return err
		}
		if err := writePub(filepath.Join(dir, changeLogRetiredDir, KeyID(oldPub)+".pub"), oldPub); err != nil {
			return err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("change log key: %w", err)
	}
	nk, err := readSeedFile(next)
	if err != nil {
		return installed(fmt.Errorf("change log key: %w", err))
	}
	if KeyID(nk.Public().(ed25519.PublicKey)) != want {
		return fmt.Errorf("change log key %s does not hold key %s", next, want)
	}
	if err := os.Rename(next, kp); err != nil {
		return installed(fmt.Errorf("change log key: %w", err))
	}
	if err := writePub(filepath.Join(dir, changeLogPubFile), nk.Public().(ed25519.PublicKey)); err != nil {
		return err
	}
	// Other pending keys are of rotations that did not commit.
	stale, _ := filepath.Glob(filepath.Join(dir, changeLogNextPrefix+"*"))
	for _, f := range stale {
		os.Remove(f)
	}
	return durable.SyncDir(dir)
}

// readSeedFile reads a base64 Ed25519 seed file (mode 0600).
func readSeedFile(path string) (ed25519.PrivateKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, &KeyPermissionError{Path: path, Mode: st.Mode()}
	}
	b, err := readBounded(path, 1024)
	if err != nil {
		return nil, err
	}
	seed, err := base64.StdEncoding.DecodeString(string(trimNL(b)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%s: not a base64 Ed25519 seed", path)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

func writePub(path string, pub ed25519.PublicKey) error {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return err
	}
	return durable.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
}

// ChangeLogKeys are the public keys of dataDir's change log: the current one
// (ChangeLogKeyPath) and every retired one, oldest rotation unknown, sorted
// by id. A verifier given all of them, or only the first, checks the whole
// log across rotations.
func ChangeLogKeys(dataDir string) ([]ed25519.PublicKey, error) {
	dir := filepath.Join(dataDir, changeLogDir)
	files, _ := filepath.Glob(filepath.Join(dir, changeLogRetiredDir, "*.pub"))
	sort.Strings(files)
	files = append([]string{filepath.Join(dir, changeLogPubFile)}, files...)
	var out []ed25519.PublicKey
	for _, f := range files {
		b, err := readBounded(f, 4096)
		if err != nil {
			return nil, fmt.Errorf("change-log key: %w", err)
		}
		k, err := ParseChangeLogKey(b)
		if err != nil {
			return nil, fmt.Errorf("change-log key %s: %w", f, err)
		}
		out = append(out, k)
	}
	return out, nil
}
