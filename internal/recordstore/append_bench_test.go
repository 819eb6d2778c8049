package recordstore

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

// BenchmarkAppend ships a log of 20,000 decisions of 1,000 agents over an
// hour in shipments of at most 500 records, as a replica's shipper does,
// into an empty store: the cost of storing (verification, rows, indexes,
// rollups). It reports records/s and this process's CPU time per record
// (on PostgreSQL the server's is not in it).
//
//	go test -run '^$' -bench Append -benchtime 3x ./internal/recordstore
func BenchmarkAppend(b *testing.B) {
	const n, agents = 20000, 1000
	dir := b.TempDir()
	// Async: group commits of up to decisionlog.MaxBatch records, as under load.
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Name: "replica-a", Mode: decisionlog.Async, AsyncBuffer: n})
	if err != nil {
		b.Fatal(err)
	}
	keys := l.PublicKeys()
	base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		agent := fmt.Sprintf("bot-%d", (i*7919)%agents)
		d := decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}}
		if i%3 == 0 {
			d = decisionlog.Decision{HTTPStatus: 403, Reasons: []string{"scope_missing"}}
		}
		if _, err := l.Append(context.Background(), &decisionlog.Record{DecisionID: fmt.Sprintf("d-%06d", i), Time: base.Add(time.Duration(i) * 180 * time.Millisecond),
			Agent:    decisionlog.Agent{ID: agent, SPIFFEID: "spiffe://acme.test/agent/" + agent, Tenant: "acme.test", TrustLevel: "L2"},
			Request:  decisionlog.Request{ID: fmt.Sprintf("r-%06d", i), Method: "POST", Path: "/v1/x", Operation: []string{"payments:initiate", "payments:refund", "reports:read"}[i%3]},
			Decision: d}); err != nil {
			b.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	groups := readGroups(b, filepath.Join(dir, "log"))
	// Shipments of whole batches, at most 500 records each.
	var shipments [][]Group
	for i := 0; i < len(groups); {
		j, recs := i, 0
		for j < len(groups) && (j == i || recs+len(groups[j].Records) <= 500) {
			recs += len(groups[j].Records)
			j++
		}
		shipments, i = append(shipments, groups[i:j]), j
	}
	// "+windows": with the four windows the Compliance page keeps (1, 7, 30
	// and 90 days), which every record here falls in.
	for _, kind := range []string{"sqlite", "sqlite+windows", "postgres", "postgres+windows"} {
		b.Run(kind, func(b *testing.B) {
			ctx := context.Background()
			var cpu time.Duration
			for b.Loop() {
				b.StopTimer()
				dsn := filepath.Join(b.TempDir(), "records.db")
				if strings.HasPrefix(kind, "postgres") {
					dsn = postgresDSN(b)
				}
				s, err := Open(ctx, dsn)
				if err != nil {
					b.Fatal(err)
				}
				if strings.HasSuffix(kind, "+windows") {
					for _, days := range []int{1, 7, 30, 90} {
						if _, err := s.TopAgents(ctx, base.AddDate(0, 0, 1-days), 10); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.StartTimer()
				c0 := testenv.CPUTime()
				for _, sh := range shipments {
					if res, err := s.Append(ctx, Shipment{Log: "replica-a", Keys: keys, Groups: sh}); err != nil || res.Refused != nil {
						b.Fatalf("%+v %v", res, err)
					}
				}
				cpu += testenv.CPUTime() - c0
				b.StopTimer()
				s.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
			b.ReportMetric(float64(cpu.Microseconds())/float64(n*b.N), "cpu-µs/record")
		})
	}
}
