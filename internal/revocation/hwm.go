package revocation

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/agentauthz/agentauthz/internal/durable"
)

// The high-water mark: per tenant, CA and scope, the highest CRL number (and
// its thisUpdate) ever applied. A CRL below it is refused as older, like
// one below the CRL held. Kept in memory only, a restarted replica would
// accept any validly signed older CRL and un-revoke certificates until that
// CRL's nextUpdate plus grace; so with Config.StateDir it is written to
// <StateDir>/<tenant>.json, durably (temp file, fsync, rename, fsync of
// the directory), before the CRL that raised it is used, and read back by
// New.

// floor is one high-water mark.
type floor struct {
	Number     *big.Int  `json:"number,omitempty"` // nil for CRLs without a number
	ThisUpdate time.Time `json:"this_update"`
}

// hwmFile is the JSON of one tenant's high-water marks.
type hwmFile struct {
	Version int              `json:"version"`
	Tenant  string           `json:"tenant"`
	Marks   map[string]floor `json:"marks"` // by heldKey.String()
}

// maxHWMBytes bounds a high-water mark file read back.
const maxHWMBytes = 1 << 20

// String is the key of k in the high-water mark file: the hex CA key,
// then, for a CRL with an issuingDistributionPoint, the first 16 bytes of
// the SHA-256 of the extension.
func (k heldKey) String() string {
	s := hex.EncodeToString(k.ca[:])
	if k.scope != "" {
		sum := sha256.Sum256([]byte(k.scope))
		s += "/" + hex.EncodeToString(sum[:16])
	}
	return s
}

func (c *Checker) hwmPath(tenant string) string {
	return filepath.Join(c.stateDir, tenant+".json")
}

// loadFloors reads the tenant's high-water marks; a missing file is an
// empty one (a new tenant or data directory). Anything unreadable is an
// error: starting without the marks would silently drop the protection.
func (c *Checker) loadFloors(t *tenantState) error {
	if c.stateDir == "" {
		return nil
	}
	path := c.hwmPath(t.name)
	data, err := readFileLimited(path, maxHWMBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("revocation: tenant %q: crl high-water marks: %w", t.name, err)
	}
	var f hwmFile
	err = json.Unmarshal(data, &f)
	if err == nil && (f.Version != 1 || f.Tenant != t.name) {
		err = fmt.Errorf("version %d, tenant %q", f.Version, f.Tenant)
	}
	if err != nil {
		return fmt.Errorf("revocation: tenant %q: crl high-water marks %s are corrupt (%w); move the file away to start without them, which lets an older CRL back in once", t.name, path, err)
	}
	for k, v := range f.Marks {
		t.floors[k] = v
	}
	return nil
}

// raiseFloorLocked raises the high-water mark of k to crl's and persists
// it. A mark that cannot be written is logged and counted; the CRL, newer
// than what was held, is used all the same (refusing it would keep an
// older one in force).
func (c *Checker) raiseFloorLocked(t *tenantState, k heldKey, crl *CRL) {
	key := k.String()
	if f, ok := t.floors[key]; ok && crl.newerThan(&CRL{Number: f.Number, ThisUpdate: f.ThisUpdate}) != nil {
		return
	}
	if f, ok := t.floors[key]; ok && f.ThisUpdate.Equal(crl.ThisUpdate) && numbersEqual(f.Number, crl.Number) {
		return
	}
	t.floors[key] = floor{Number: crl.Number, ThisUpdate: crl.ThisUpdate}
	if c.stateDir == "" {
		return
	}
	if err := c.writeFloors(t); err != nil {
		t.errs[kindState]++
		c.log.Error("revocation: cannot persist the crl high-water mark; a restart could accept an older crl",
			"tenant", t.name, "error", err)
	}
}

func numbersEqual(a, b *big.Int) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Cmp(b) == 0
}

func (c *Checker) writeFloors(t *tenantState) error {
	data, err := json.MarshalIndent(hwmFile{Version: 1, Tenant: t.name, Marks: t.floors}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.stateDir, 0o700); err != nil {
		return err
	}
	return durable.WriteFile(c.hwmPath(t.name), data, 0o600)
}
