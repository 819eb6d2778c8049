package revocation

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/agentauthz/agentauthz/internal/durable"
)

// The last verified push state. With Config.StateDir, each tenant's last
// applied watch event is kept in <StateDir>/<tenant>.push.json exactly as it
// arrived (its bytes, signature included), and New applies it again after
// its signature verifies with the tenant's CAs: the agent revocations and
// restrictions it carries, and its CRL (verified as any CRL, bound by its
// nextUpdate like one from a file). So a replica restarted while the control
// plane is away keeps enforcing the quarantines and agent revocations it last
// verified (fail closed: a restart never forgets them) and, while that CRL is
// fresh, answers as it did before the restart. The event's expiry is not
// checked on restore: it bounds replays over the network, and the file is
// the replica's own. Its generation becomes the floor for new events only
// while it has not expired (an event older than a saved one is then a
// replay), so a control plane whose store was replaced (generations starting
// again) is accepted once the saved state is older than PushValidity.

// pushFile is the JSON of one tenant's saved push state.
type pushFile struct {
	Version    int       `json:"version"`
	Tenant     string    `json:"tenant"`
	VerifiedAt time.Time `json:"verified_at"`
	Event      []byte    `json:"event"` // the event's data as received (base64 in the file)
}

func (c *Checker) pushPath(tenant string) string {
	return filepath.Join(c.stateDir, tenant+".push.json")
}

// savePushLocked persists an applied event unless it only re-signs the
// state saved last (same generation and CRL); called with c.mu held.
func (c *Checker) savePushLocked(t *tenantState, raw []byte, ev *WatchEvent) {
	if c.stateDir == "" {
		return
	}
	key := pushSaveKey{gen: ev.Generation, crl: sha256.Sum256(ev.CRL), etag: ev.CRLETag}
	if t.pushSaved == key {
		return
	}
	data, err := json.Marshal(pushFile{Version: 1, Tenant: t.name, VerifiedAt: c.now().UTC(), Event: raw})
	if err == nil {
		if err = os.MkdirAll(c.stateDir, 0o700); err == nil {
			err = durable.WriteFile(c.pushPath(t.name), data, 0o600)
		}
	}
	if err != nil {
		t.errs[kindState]++
		c.log.Error("revocation: cannot save the push state; a restart without the control plane would start without it",
			"tenant", t.name, "error", err)
		return
	}
	t.pushSaved = key
}

// pushSaveKey identifies the saved state.
type pushSaveKey struct {
	gen  int64
	crl  [sha256.Size]byte
	etag string
}

// restorePush applies the tenant's saved push state, if any. A file that is
// unreadable, for another tenant, or whose event does not verify with the
// tenant's CAs is refused, logged and counted: the tenant then starts as
// without it (not ready until a source loads).
func (c *Checker) restorePush(name string) {
	t := c.tenants[name]
	if c.stateDir == "" || t.cfg.WatchURL == "" {
		return
	}
	path := c.pushPath(name)
	data, err := readFileLimited(path, c.maxBytes*4/3+maxSSELineOverhead)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	var f pushFile
	var ev WatchEvent
	if err == nil {
		err = json.Unmarshal(data, &f)
	}
	if err == nil && (f.Version != 1 || f.Tenant != name) {
		err = fmt.Errorf("version %d, tenant %q", f.Version, f.Tenant)
	}
	if err == nil {
		err = json.Unmarshal(f.Event, &ev)
	}
	if err == nil && ev.Tenant != name {
		err = fmt.Errorf("event for tenant %q", ev.Tenant)
	}
	if err == nil {
		err = verifyPushSignature(t.cfg.CAs, &ev)
	}
	if err != nil {
		c.mu.Lock()
		t.errs[kindState]++
		c.mu.Unlock()
		c.log.Error("revocation: saved push state refused; starting without it", "tenant", name, "file", path, "error", err)
		return
	}
	src := len(t.sources) - 1 // the watch source is the last (newTenantState)
	if len(ev.CRL) > 0 {
		if err := c.apply(name, src, ev.CRL); err != nil {
			c.log.Warn("revocation: crl of the saved push state not applied", "tenant", name, "error", err)
		}
	}
	c.setAgents(name, ev.RevokedAgents)
	c.mu.Lock()
	t.pushAt, t.pushExpires, t.pushRestored = f.VerifiedAt, time.Unix(ev.Expires, 0), true
	if c.now().Before(t.pushExpires) {
		t.pushGen = ev.Generation
	}
	t.pushSaved = pushSaveKey{gen: ev.Generation, crl: sha256.Sum256(ev.CRL), etag: ev.CRLETag}
	c.mu.Unlock()
	if c.onRestr != nil {
		r := ev.Restrictions
		if len(r) == 0 {
			r = json.RawMessage("{}")
		}
		c.onRestr(name, r)
	}
	c.log.Warn("revocation: restored the push state saved before the restart; it is replaced by the control plane's next event",
		"tenant", name, "generation", ev.Generation, "revoked_agents", len(ev.RevokedAgents),
		"verified_at", f.VerifiedAt.Format(time.RFC3339))
}
