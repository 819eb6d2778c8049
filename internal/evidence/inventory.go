package evidence

import (
	"fmt"

	"github.com/agentauthz/agentauthz/internal/ca"
)

// inventory is what the CA inventory and its signed change log hold.
type inventory struct {
	certs        []ca.Certificate
	events       []ca.Event
	restrictions []ca.Restriction
	changeLog    *ca.ChangeLogResult // nil when there is no change-log key
	changeLogErr string
}

func readInventory(a *ca.Authority, dataDir string) (*inventory, error) {
	inv := &inventory{}
	var err error
	if inv.certs, err = a.List(ca.ListFilter{}); err != nil {
		return nil, fmt.Errorf("inventory: %w", err)
	}
	if inv.events, err = a.Events("", ""); err != nil {
		return nil, fmt.Errorf("inventory events: %w", err)
	}
	tds, err := a.TrustDomains()
	if err != nil {
		return nil, fmt.Errorf("inventory: %w", err)
	}
	for _, td := range tds {
		rs, err := a.ListRestrictions(td)
		if err != nil {
			return nil, fmt.Errorf("restrictions: %w", err)
		}
		inv.restrictions = append(inv.restrictions, rs...)
	}
	keys, err := ca.ChangeLogKeys(dataDir) // the current key and those it rotated from
	if err != nil {
		inv.changeLogErr = "no change-log key: " + err.Error()
		return inv, nil
	}
	if inv.changeLog, err = a.VerifyChangeLog(keys...); err != nil {
		return nil, fmt.Errorf("change log: %w", err)
	}
	return inv, nil
}
