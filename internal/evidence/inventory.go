package evidence

import (
	"fmt"

	"github.com/agentauthz/agentauthz/internal/ca"
)

// Inventory is what the CA inventory and its signed change log hold, read
// from a data directory (ReadInventory) or from the control plane's API.
type Inventory struct {
	Certs  []ca.Certificate
	Events []ca.Event
	// ChangeLog is the change log's verification; nil when it could not be
	// verified, ChangeLogErr saying why.
	ChangeLog    *ca.ChangeLogResult
	ChangeLogErr string
}

// ReadInventory reads the inventory of a local data directory and verifies
// its change log with the key beside it.
func ReadInventory(a *ca.Authority, dataDir string) (*Inventory, error) {
	inv := &Inventory{}
	var err error
	if inv.Certs, err = a.List(ca.ListFilter{}); err != nil {
		return nil, fmt.Errorf("inventory: %w", err)
	}
	if inv.Events, err = a.Events("", ""); err != nil {
		return nil, fmt.Errorf("inventory events: %w", err)
	}
	keys, err := ca.ChangeLogKeys(dataDir) // the current key and those it rotated from
	if err != nil {
		inv.ChangeLogErr = "no change-log key: " + err.Error()
		return inv, nil
	}
	if inv.ChangeLog, err = a.VerifyChangeLog(keys...); err != nil {
		return nil, fmt.Errorf("change log: %w", err)
	}
	return inv, nil
}
