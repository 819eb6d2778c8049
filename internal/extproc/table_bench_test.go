package extproc

import (
	"runtime"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

// benchRecords are n allowed decisions as extauthz records them, with
// UUIDv7 ids made beforehand (the id is the Check's cost, not the table's).
func benchRecords(n int) []decisionlog.Record {
	recs := make([]decisionlog.Record, n)
	now := time.Now()
	for i := range recs {
		recs[i] = decisionlog.Record{DecisionID: uuid.Must(uuid.NewV7()).String(), Time: now,
			Agent:    decisionlog.Agent{ID: "payments-agent", TrustLevel: "L3"},
			Request:  decisionlog.Request{Method: "POST", Host: "payments.internal", Path: "/v1/payments", Operation: "payments:initiate"},
			Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}}}
	}
	return recs
}

// BenchmarkTable is the table's cost per Check: note-take notes a decision
// and takes it back as ext_proc does within milliseconds; note-full notes
// into a full table of 100,000 that nothing takes from (Envoy without the
// ext_proc filter), so each note evicts the oldest.
func BenchmarkTable(b *testing.B) {
	const size = 100000
	recs := benchRecords(2 * size)
	b.Run("note-take", func(b *testing.B) {
		t := NewTable(TableOptions{Size: size, TTL: time.Hour})
		b.ReportAllocs()
		defer reportCPU(b, testenv.CPUTime())
		i := 0
		for b.Loop() {
			r := &recs[i%len(recs)]
			i++
			t.Note(r)
			if _, _, err := t.Lookup(r.DecisionID, nil, "POST", "payments.internal", "/v1/payments"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("note-full", func(b *testing.B) {
		t := NewTable(TableOptions{Size: size, TTL: time.Hour})
		for i := range size {
			t.Note(&recs[i])
		}
		b.ReportAllocs()
		defer reportCPU(b, testenv.CPUTime())
		i := size
		for b.Loop() {
			t.Note(&recs[i%len(recs)])
			i++
		}
	})
}

// BenchmarkTableMemory is the live heap a full table of 100,000 decisions
// holds, their ids included: what serve's GOGC=400 multiplies.
func BenchmarkTableMemory(b *testing.B) {
	const size = 100000
	var held float64
	for b.Loop() {
		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		t := NewTable(TableOptions{Size: size, TTL: time.Hour})
		for range size {
			// A fresh id each, as each Check makes one.
			t.Note(&benchRecords(1)[0])
		}
		runtime.GC()
		runtime.ReadMemStats(&m1)
		held += float64(m1.HeapAlloc - m0.HeapAlloc)
		runtime.KeepAlive(t)
	}
	b.ReportMetric(held/float64(b.N)/(1<<20), "MiB/100k")
}
