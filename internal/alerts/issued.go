package alerts

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/agentauthz/agentauthz/internal/ca"
)

// issued tells the detector which certificates the inventory issued (by
// SHA-256), so that a genuine agent's identity failures (an expired
// certificate, a clock off) are judged per certificate and never folded
// into a spray of forged ones. The inventory keeps certificates, not their
// hashes: they are hashed once, and a miss looks for newer ones (the
// newest issue, renew and reissue events) at most once a second, so a spray
// of unknown certificates costs one small query a second.
type issued struct {
	auth    *ca.Authority
	now     func() time.Time
	log     hclog.Logger
	hashes  map[string]struct{}
	seq     int64 // the newest issuance event read
	checked time.Time
}

// issuanceEvents are the change-log events of a certificate stored.
var issuanceEvents = []string{"issue", "renew", "reissue"}

// catchUp is how many new issuance events are read one by one; more than
// that since the last look and the whole inventory is read again.
const catchUp = 64

func newIssued(auth *ca.Authority, now func() time.Time, log hclog.Logger) *issued {
	return &issued{auth: auth, now: now, log: log}
}

func (k *issued) has(certSHA256 string) bool {
	if _, ok := k.hashes[certSHA256]; ok {
		return true
	}
	if now := k.now(); k.checked.IsZero() || now.Sub(k.checked) >= time.Second {
		k.checked = now
		if err := k.refresh(); err != nil {
			// Not known: the failure is counted in its replica's spray,
			// still alerted.
			k.log.Error("anomaly detector: reading the inventory's certificates", "error", err)
		}
	}
	_, ok := k.hashes[certSHA256]
	return ok
}

func (k *issued) refresh() error {
	evs, err := k.auth.LastEvents(catchUp, issuanceEvents...)
	if err != nil {
		return err
	}
	if len(evs) == 0 || evs[0].Seq == k.seq {
		if k.hashes == nil {
			k.hashes = map[string]struct{}{}
		}
		return nil
	}
	var filters []ca.ListFilter
	if k.hashes != nil && evs[len(evs)-1].Seq <= k.seq {
		for _, e := range evs {
			if e.Seq > k.seq {
				filters = append(filters, ca.ListFilter{TrustDomain: e.TrustDomain, AgentID: e.AgentID, Serial: e.Serial})
			}
		}
	} else {
		k.hashes = map[string]struct{}{}
		filters = []ca.ListFilter{{}} // everything
	}
	for _, f := range filters {
		cs, err := k.auth.List(f)
		if err != nil {
			return err
		}
		for _, c := range cs {
			if b, _ := pem.Decode([]byte(c.PEM)); b != nil {
				sum := sha256.Sum256(b.Bytes)
				k.hashes[hex.EncodeToString(sum[:])] = struct{}{}
			}
		}
	}
	k.seq = evs[0].Seq
	return nil
}
