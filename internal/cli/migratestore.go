package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/alerts"
	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/pgsql"
	"github.com/agentauthz/agentauthz/internal/recordstore"
)

// newMigrateStoreCmd is `agentauthz control migrate-store`: the SQLite
// stores of a data directory copied into an empty PostgreSQL database, for
// a control plane that moves to high availability (docs/control-plane.md,
// "Moving from SQLite to PostgreSQL"). The copying is the stores' own
// (ca.CopyInventory, recordstore.CopyTo, alerts.CopyTo).
func newMigrateStoreCmd() *cobra.Command {
	var to string
	cmd := &cobra.Command{
		Use:   "migrate-store",
		Short: "Copy the SQLite inventory, change log, decision records and alerts of a data directory into an empty PostgreSQL database",
		Long: `Copy <data-dir>/inventory.db (trust domains, agents, certificates,
restrictions and the signed change log, byte for byte) and <data-dir>/records.db
(every decision log's records, checkpoints and refusals) and <data-dir>/alerts.db
(the anomaly detector's alerts, responses, state and cursors) into the empty
PostgreSQL database --to names, then check the copy: the change log must
verify to the same head with the data directory's keys, and every decision log
must have the same records and tree root. The SQLite files are only read.
Stop the control plane first (migrate-store refuses while one runs on the
data directory) and run no agentauthz agent command until it has finished.
Console sign-ins are not copied: users sign in again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dataDir, err := cmd.Flags().GetString("data-dir")
			if err != nil {
				dataDir = caEnvDataDir()
			}
			return runMigrateStore(cmd, dataDir, to)
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the empty PostgreSQL database to copy into: postgres://user@host:5432/db")
	return cmd
}

func runMigrateStore(cmd *cobra.Command, dataDir, to string) error {
	if !pgsql.Is(to) {
		return withHint(errors.New("--to must be a postgres:// URL"), "agentauthz control migrate-store --data-dir %s --to postgres://user@host:5432/db", dataDir)
	}
	db, err := pgsql.Open(to) // parses it, connects to nothing
	if err != nil {
		return withHint(fmt.Errorf("--to: %w", err), "--to takes postgres://user[:password]@host:5432/db[?sslmode=…]")
	}
	db.Close()
	if st, err := os.Stat(filepath.Join(dataDir, "inventory.db")); err != nil || !st.Mode().IsRegular() {
		return withHint(fmt.Errorf("no SQLite inventory in %s", dataDir), "pass the data directory of the control plane: --data-dir DIR (or AGENTAUTHZ_DATA_DIR)")
	}
	unlock, err := ca.LockDataDir(dataDir, true)
	if err != nil {
		return withHint(fmt.Errorf("%w; nothing was copied", err), "stop agentauthz control serve (and serve --dev) on %s first", dataDir)
	}
	defer unlock()
	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	emptyHint := "the destination must be an empty database: create a new one (createdb) or drop the one you tried (dropdb), then run again; the SQLite files were not changed"
	// The records' and alerts' tables are checked before anything is copied:
	// a refusal then leaves the destination as it was.
	recPath, alertsPath := filepath.Join(dataDir, "records.db"), filepath.Join(dataDir, "alerts.db")
	for _, c := range []struct {
		path  string
		check func(context.Context, string) error
	}{{recPath, recordstore.CheckEmpty}, {alertsPath, alerts.CheckEmpty}} {
		if _, err := os.Stat(c.path); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := c.check(ctx, to); err != nil {
			return withHint(fmt.Errorf("%w; nothing was copied", err), "%s", emptyHint)
		}
	}
	inv, err := ca.CopyInventory(ctx, dataDir, to)
	if err != nil {
		if errors.Is(err, ca.ErrDestinationNotEmpty) {
			return withHint(fmt.Errorf("%w; nothing was copied", err), "%s", emptyHint)
		}
		return withHint(fmt.Errorf("copy the inventory: %w", err), "%s", emptyHint)
	}
	fmt.Fprintf(out, "inventory: copied to %s\n", pgsql.Redact(to))
	for _, t := range inv.Tables {
		fmt.Fprintf(out, "  %-14s %d rows\n", t.Table, t.Rows)
	}
	cl := inv.ChangeLog
	fmt.Fprintf(out, "  change log verified on the destination: %d changes, seq 1..%d, head %s\n", cl.Events, cl.LastSeq, cl.Head)
	fmt.Fprintln(out, "  console sign-in links and sessions were not copied: users sign in again")
	if _, err := os.Stat(recPath); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(out, "records: none (%s does not exist)\n", recPath)
	} else {
		rc, err := recordstore.CopyTo(ctx, recPath, to)
		if err != nil {
			if errors.Is(err, recordstore.ErrNotEmpty) {
				return withHint(fmt.Errorf("%w; the inventory was copied, the records were not", err), "%s", emptyHint)
			}
			return withHint(fmt.Errorf("copy the decision records: %w", err), "%s", emptyHint)
		}
		fmt.Fprintf(out, "records: %d records of %d logs copied (%d checkpoints, %d refusals); rollups rebuilt\n",
			rc.Tables["records"], len(rc.Logs), rc.Tables["checkpoints"], rc.Tables["refusals"])
		for _, l := range rc.Logs {
			fmt.Fprintf(out, "  %-24s %d records, root %s (same as the source)\n", l.Log, l.Records, l.Root)
		}
	}
	if _, err := os.Stat(alertsPath); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(out, "alerts: none (%s does not exist)\n", alertsPath)
	} else {
		n, err := alerts.CopyTo(ctx, alertsPath, to)
		if err != nil {
			if errors.Is(err, alerts.ErrNotEmpty) {
				return withHint(fmt.Errorf("%w; the inventory and records were copied, the alerts were not", err), "%s", emptyHint)
			}
			return withHint(fmt.Errorf("copy the alert store: %w", err), "%s", emptyHint)
		}
		state := "with the detector's saved state and cursors: it goes on where it stopped"
		if n["detector"] == 0 {
			state = "no saved detector state: the detector reads the stored records from the start"
		}
		fmt.Fprintf(out, "alerts: %d alerts copied, %s\n", n["alerts"], state)
	}
	fmt.Fprintf(out, "done: start the control plane with --store %s (the keys stay files in %s)\n", pgsql.Redact(to), dataDir)
	return nil
}
