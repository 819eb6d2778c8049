package decisionlog

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func testOptions(t testing.TB) Options {
	t.Helper()
	d := t.TempDir()
	return Options{Dir: filepath.Join(d, "log"), KeyDir: filepath.Join(d, "keys"), Name: "test-1", retryMin: time.Millisecond}
}

func mustOpen(t testing.TB, o Options) *Log {
	t.Helper()
	l, err := Open(o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}

func sampleRecord(i int) *Record {
	return &Record{
		DecisionID: fmt.Sprintf("dec-%06d", i),
		Time:       time.Date(2026, 11, 25, 12, 0, 0, 123456789, time.UTC).Add(time.Duration(i) * time.Millisecond),
		Agent: Agent{ID: "payments-bot", SPIFFEID: "spiffe://acme.test/agent/payments-bot", Tenant: "acme.test",
			TrustLevel: "L3", Scopes: []string{"payments:initiate"}, Owner: "team-pay", Serial: "1f", CertSHA256: strings.Repeat("ab", 32), Issuer: "CN=Acme CA"},
		Request:  Request{ID: fmt.Sprintf("req-%d", i), Method: "POST", Host: "pay.internal", Path: "/v1/payments", Operation: "payments:initiate", Source: "10.0.0.7:41234"},
		Decision: Decision{Allowed: i%3 != 0, HTTPStatus: 200, Reasons: []string{}, PolicyRevision: "rev-42"},
	}
}

func appendN(t testing.TB, l *Log, from, n int) []Receipt {
	t.Helper()
	var out []Receipt
	for i := from; i < from+n; i++ {
		rc, err := l.Append(context.Background(), sampleRecord(i))
		if err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
		out = append(out, rc)
	}
	return out
}

func mustVerify(t *testing.T, o Options) *Result {
	t.Helper()
	ks, err := LoadKeySet(o.KeyDir)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Verify(o.Dir, ks)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if res.Problem != nil {
		t.Fatalf("Verify found %v", res.Problem)
	}
	return res
}

func TestAppendConcurrentVerifies(t *testing.T) {
	o := testOptions(t)
	o.SegmentMaxBytes = 8 << 10 // several segments
	l := mustOpen(t, o)
	const workers, each = 16, 25
	var wg sync.WaitGroup
	seqs := make(chan uint64, workers*each)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				rc, err := l.Append(context.Background(), sampleRecord(w*each+i))
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := VerifyReceipt(rc.Header, l.PublicKeys()); err != nil {
					t.Errorf("receipt of %d: %v", rc.Index, err)
				}
				seqs <- rc.Index
			}
		}(w)
	}
	wg.Wait()
	close(seqs)
	seen := map[uint64]bool{}
	for s := range seqs {
		if seen[s] {
			t.Fatalf("seq %d assigned twice", s)
		}
		seen[s] = true
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	res := mustVerify(t, o)
	if res.Records != workers*each || res.Format != 2 {
		t.Fatalf("result %+v", res)
	}
	if res.Segments < 3 {
		t.Fatalf("want rotation into several segments, got %d", res.Segments)
	}
}

func TestRecordTimeFormat(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	defer l.Close()
	appendN(t, l, 0, 1)
	l.Close()
	records, _, _ := logLines(t, o.Dir)
	raw := records[0]
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if got, want := m["time"], "2026-11-25T12:00:00.123456Z"; got != want {
		t.Fatalf("time = %v, want %v", got, want)
	}
	for _, k := range []string{"index", "decision_id", "log", "kind", "agent", "request", "decision"} {
		if _, ok := m[k]; !ok {
			t.Errorf("record JSON lacks %q: %s", k, raw)
		}
	}
	rec, err := decodeRecordLine(raw)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Index != 0 || rec.Kind != KindDecision || rec.Log != "test-1" || !rec.Time.Equal(time.Date(2026, 11, 25, 12, 0, 0, 123456000, time.UTC)) {
		t.Fatalf("decoded %+v", rec)
	}
}

// A receipt verifies given nothing but the served JWKS (or the PEM form),
// and the kid is the RFC 7638 thumbprint go-jose computes.
func TestReceiptVerifiesWithServedJWKS(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	defer l.Close()
	rc := appendN(t, l, 0, 1)[0]

	rr := httptest.NewRecorder()
	l.JWKSHandler().ServeHTTP(rr, httptest.NewRequest("GET", "/keys", nil))
	if rr.Code != 200 || rr.Header().Get("Content-Type") != "application/jwk-set+json" {
		t.Fatalf("JWKS response %d %q", rr.Code, rr.Header().Get("Content-Type"))
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(rr.Body.Bytes(), &set); err != nil {
		t.Fatal(err)
	}
	keys := set.Key(l.KeyID())
	if len(keys) != 1 {
		t.Fatalf("JWKS has %d keys for kid %q", len(keys), l.KeyID())
	}
	tp, err := keys[0].Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if b64.EncodeToString(tp) != l.KeyID() {
		t.Fatalf("kid %s is not the RFC 7638 thumbprint %s", l.KeyID(), b64.EncodeToString(tp))
	}
	for _, data := range [][]byte{rr.Body.Bytes(), l.PublicKeys().PEM()} {
		ks, err := ParseKeySet(data)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := VerifyReceipt(rc.Header, ks); err != nil {
			t.Fatal(err)
		}
	}
	// GET /checkpoint serves the signed note of the receipt's checkpoint.
	rr = httptest.NewRecorder()
	l.CheckpointHandler().ServeHTTP(rr, httptest.NewRequest("GET", "/checkpoint", nil))
	r, _ := ParseReceipt(rc.Header)
	_ = r.Verify(mustVerifiers(t, "test-1", l.PublicKeys()))
	if rr.Code != 200 || rr.Body.String() != string(r.SignedCheckpoint()) {
		t.Fatalf("GET /checkpoint: %d %q", rr.Code, rr.Body.String())
	}
}

func TestKeyFilePermissions(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	kid := l.KeyID()
	l.Close()
	st, err := os.Stat(filepath.Join(o.KeyDir, keyFilePrefix+kid+keyFileSuffix))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v", st.Mode().Perm())
	}
	os.Chmod(filepath.Join(o.KeyDir, keyFilePrefix+kid+keyFileSuffix), 0o644)
	if _, err := Open(o); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("Open with a 0644 key = %v", err)
	}
}

func TestRestartContinuesChain(t *testing.T) {
	o := testOptions(t)
	for round := 0; round < 3; round++ {
		l := mustOpen(t, o)
		rcs := appendN(t, l, round*10, 10)
		if want := uint64(round * 10); rcs[0].Index != want {
			t.Fatalf("round %d starts at index %d, want %d", round, rcs[0].Index, want)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if res := mustVerify(t, o); res.Records != 30 {
		t.Fatalf("records %d", res.Records)
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	defer l.Close()
	if _, err := Open(o); err == nil {
		t.Fatal("second Open of the same dir succeeded")
	}
}

func lastSegment(t *testing.T, dir string) string {
	t.Helper()
	segs, err := listSegments(dir)
	if err != nil || len(segs) == 0 {
		t.Fatalf("segments %v %v", segs, err)
	}
	return filepath.Join(dir, segs[len(segs)-1])
}

func TestTornTailRecovery(t *testing.T) {
	for name, tail := range map[string]string{
		"partial line": "eyJhbGciOiJFZERTQSIsImtpZCI6",
		"zeros":        "\x00\x00\x00\x00\x00\x00\x00\x00",
		"garbage line": "not a record\n",
	} {
		t.Run(name, func(t *testing.T) {
			o := testOptions(t)
			l := mustOpen(t, o)
			appendN(t, l, 0, 5)
			l.Close()
			seg := lastSegment(t, o.Dir)
			before, _ := os.ReadFile(seg)
			f, err := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(tail)
			f.Close()
			l = mustOpen(t, o)
			after, _ := os.ReadFile(seg)
			if string(after) != string(before) {
				t.Fatalf("torn tail not truncated: %d bytes, want %d", len(after), len(before))
			}
			// What was cut is kept; zeros alone are padding, not kept.
			kept := strings.TrimRight(tail, "\x00")
			side := filepath.Join(o.Dir, fmt.Sprintf("%s%s-%d", tornFilePrefix, filepath.Base(seg), len(before)))
			if got, err := os.ReadFile(side); kept != "" && (err != nil || string(got) != kept) {
				t.Fatalf("side file: %q, %v; want %q", got, err, kept)
			}
			if got := tornFiles(t, o.Dir); (kept == "") != (len(got) == 0) {
				t.Fatalf("side files %v", got)
			}
			if rc := appendN(t, l, 5, 1)[0]; rc.Index != 5 {
				t.Fatalf("index after recovery %d", rc.Index)
			}
			l.Close()
			if res := mustVerify(t, o); res.Records != 6 {
				t.Fatalf("records %d", res.Records)
			}
		})
	}
}

func TestOpenRefusesMidLogDamage(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	appendN(t, l, 0, 5)
	l.Close()
	seg := lastSegment(t, o.Dir)
	data, _ := os.ReadFile(seg)
	lines := strings.SplitAfter(string(data), "\n")
	lines[1] = "garbage\n"
	os.WriteFile(seg, []byte(strings.Join(lines, "")), 0o640)
	if _, err := Open(o); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open = %v, want ErrCorrupt", err)
	}
}

func TestRemovesEmptyLastSegment(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	appendN(t, l, 0, 3)
	l.Close()
	// A crash right after creating the next segment leaves it empty.
	os.WriteFile(filepath.Join(o.Dir, segmentName(3)), nil, 0o640)
	l = mustOpen(t, o)
	if rc := appendN(t, l, 3, 1)[0]; rc.Index != 3 {
		t.Fatalf("index %d", rc.Index)
	}
	l.Close()
	mustVerify(t, o)
}

// faultyFS wraps the real files; while broken, opens, writes and flushes
// fail with EIO (tests run as root, so permissions cannot simulate this).
type faultyFS struct {
	broken    atomic.Bool
	datasyncs atomic.Int64  // the writer's per-batch flushes
	gate      chan struct{} // when non-nil, the first Datasync waits for it
	entered   chan struct{} // when non-nil, closed once the first Datasync waits
	once      sync.Once
}

type faultyFile struct {
	osSegment
	fs *faultyFS
}

func (f *faultyFS) open(name string, flag int, perm os.FileMode) (segmentFile, error) {
	if f.broken.Load() {
		return nil, &os.PathError{Op: "open", Path: name, Err: syscall.EIO}
	}
	file, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return faultyFile{osSegment{file}, f}, nil
}

func (f faultyFile) WriteAt(p []byte, off int64) (int, error) {
	if f.fs.broken.Load() {
		n := 0
		if len(bytes.Trim(p, "\x00")) > 0 {
			n, _ = f.File.WriteAt(p[:len(p)/2], off) // a torn write of records
		}
		return n, syscall.EIO
	}
	return f.File.WriteAt(p, off)
}

func (f faultyFile) Datasync() error {
	if f.fs.gate != nil {
		f.fs.once.Do(func() {
			if f.fs.entered != nil {
				close(f.fs.entered)
			}
			<-f.fs.gate
		})
	}
	if f.fs.broken.Load() {
		return syscall.EIO
	}
	f.fs.datasyncs.Add(1)
	return f.osSegment.Datasync()
}

func (f faultyFile) Sync() error {
	if f.fs.broken.Load() {
		return syscall.EIO
	}
	return f.File.Sync()
}

func (f faultyFile) Truncate(n int64) error {
	if f.fs.broken.Load() {
		return syscall.EIO
	}
	return f.File.Truncate(n)
}

func waitReady(t *testing.T, l *Log) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !l.Ready() {
		if time.Now().After(deadline) {
			t.Fatalf("log did not recover: %v", l.Err())
		}
		time.Sleep(time.Millisecond)
	}
}

func TestUnavailableThenRecovers(t *testing.T) {
	o := testOptions(t)
	fs := &faultyFS{}
	o.openFile = fs.open
	reg := prometheus.NewPedanticRegistry()
	o.Registerer = reg
	l := mustOpen(t, o)
	defer l.Close()
	appendN(t, l, 0, 3)

	fs.broken.Store(true)
	_, err := l.Append(context.Background(), sampleRecord(3))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Append on a failing disk = %v, want ErrUnavailable", err)
	}
	if l.Ready() || !errors.Is(l.Err(), ErrUnavailable) {
		t.Fatalf("Ready=%v Err=%v while failing", l.Ready(), l.Err())
	}
	if _, err := l.Append(context.Background(), sampleRecord(4)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("second Append = %v", err)
	}
	if got := metric(t, reg, "agentauthz_decisionlog_ready").GetGauge().GetValue(); got != 0 {
		t.Fatalf("ready gauge %v while failing", got)
	}

	fs.broken.Store(false)
	waitReady(t, l)
	rc, err := l.Append(context.Background(), sampleRecord(5))
	if err != nil {
		t.Fatal(err)
	}
	// The failed records were never acknowledged: their seqs are reused
	// and the torn bytes are gone.
	if rc.Index != 3 {
		t.Fatalf("index after recovery %d, want 3", rc.Index)
	}
	l.Close()
	if res := mustVerify(t, o); res.Records != 4 {
		t.Fatalf("records %d", res.Records)
	}
}

// The same with the real file system: the log directory is replaced by a
// plain file, so creating the next segment fails.
func TestUnavailableWhenDirIsAFile(t *testing.T) {
	o := testOptions(t)
	o.SegmentMaxBytes = 1 // every batch opens a new segment
	l := mustOpen(t, o)
	defer l.Close()
	appendN(t, l, 0, 2)
	moved := o.Dir + ".moved"
	if err := os.Rename(o.Dir, moved); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(o.Dir, []byte("not a dir"), 0o600)
	if _, err := l.Append(context.Background(), sampleRecord(2)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Append = %v, want ErrUnavailable", err)
	}
	if l.Ready() {
		t.Fatal("ready while the log dir is a file")
	}
	os.Remove(o.Dir)
	if err := os.Rename(moved, o.Dir); err != nil {
		t.Fatal(err)
	}
	waitReady(t, l)
	appendN(t, l, 3, 2)
	l.Close()
	if res := mustVerify(t, o); res.Records != 4 {
		t.Fatalf("records %d", res.Records)
	}
}

// Many concurrent appends share fsyncs: the first record's fsync is held
// until every other append is sequenced, so exactly one more fsync carries
// them all.
func TestGroupCommit(t *testing.T) {
	o := testOptions(t)
	fs := &faultyFS{gate: make(chan struct{}), entered: make(chan struct{})}
	o.openFile = fs.open
	l := mustOpen(t, o)
	const n = 100
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := l.Append(context.Background(), sampleRecord(0)); err != nil {
			t.Error(err)
		}
	}()
	<-fs.entered
	for i := 1; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if _, err := l.Append(context.Background(), sampleRecord(i)); err != nil {
				t.Error(err)
			}
		}(i)
	}
	waitSequenced(t, l, uint64(n))
	close(fs.gate)
	wg.Wait()
	if got := fs.datasyncs.Load(); got != 2 {
		t.Fatalf("%d fsyncs for %d records, want 2", got, n)
	}
	l.Close()
	mustVerify(t, o)
}

// A flush that fails fails its batch and every record queued behind it: no
// waiter is acknowledged, each gets ErrUnavailable, and the log is writable
// again once the disk recovers, continuing at the last durable index.
func TestCommitFlushErrorFailsEveryWaiter(t *testing.T) {
	o := testOptions(t)
	fs := &faultyFS{gate: make(chan struct{}), entered: make(chan struct{})}
	o.openFile = fs.open
	l := mustOpen(t, o)
	defer l.Close()
	const n = 50
	errs := make(chan error, n)
	go func() {
		_, err := l.Append(context.Background(), sampleRecord(0))
		errs <- err
	}()
	<-fs.entered // the first batch's flush is held
	for i := 1; i < n; i++ {
		go func() {
			_, err := l.Append(context.Background(), sampleRecord(i))
			errs <- err
		}()
	}
	waitSequenced(t, l, n)
	fs.broken.Store(true)
	close(fs.gate)
	for range n {
		if err := <-errs; !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Append during a failed flush = %v, want ErrUnavailable", err)
		}
	}
	if l.Ready() {
		t.Fatal("ready after a failed flush")
	}
	fs.broken.Store(false)
	waitReady(t, l)
	rc, err := l.Append(context.Background(), sampleRecord(n))
	if err != nil || rc.Index != 0 {
		t.Fatalf("after recovery: index %d, %v; want 0 (nothing was durable)", rc.Index, err)
	}
	l.Close()
	if res := mustVerify(t, o); res.Records != 1 {
		t.Fatalf("records %d, want 1", res.Records)
	}
}

// Close while records wait behind a flush in progress: every record
// sequenced before Close is committed and acknowledged, later appends get
// ErrClosed, and the log verifies with exactly the acknowledged records.
func TestCommitCloseDrains(t *testing.T) {
	o := testOptions(t)
	fs := &faultyFS{gate: make(chan struct{}), entered: make(chan struct{})}
	o.openFile = fs.open
	l := mustOpen(t, o)
	const n = 50
	errs := make(chan error, n)
	go func() {
		_, err := l.Append(context.Background(), sampleRecord(0))
		errs <- err
	}()
	<-fs.entered
	for i := 1; i < n; i++ {
		go func() {
			_, err := l.Append(context.Background(), sampleRecord(i))
			errs <- err
		}()
	}
	waitSequenced(t, l, n)
	closed := make(chan error, 1)
	go func() { closed <- l.Close() }()
	deadline := time.Now().Add(10 * time.Second)
	for l.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("Close did not start")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := l.Append(context.Background(), sampleRecord(n)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close = %v, want ErrClosed", err)
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a flush was held", err)
	case <-time.After(20 * time.Millisecond):
	}
	close(fs.gate)
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("Append queued before Close = %v", err)
		}
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if res := mustVerify(t, o); res.Records != n {
		t.Fatalf("records %d, want %d", res.Records, n)
	}
}

func TestAsyncMode(t *testing.T) {
	o := testOptions(t)
	o.Mode = Async
	fs := &faultyFS{gate: make(chan struct{})}
	o.openFile = fs.open
	o.AsyncBuffer = 1
	l := mustOpen(t, o)
	if _, err := l.Append(context.Background(), sampleRecord(0)); err != nil {
		t.Fatal(err)
	}
	// The writer holds the first record in fsync: the buffer is full.
	if _, err := l.Append(context.Background(), sampleRecord(1)); !errors.Is(err, ErrBufferFull) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Append with a full buffer = %v", err)
	}
	close(fs.gate)
	l.Close()
	if res := mustVerify(t, o); res.Records != 1 {
		t.Fatalf("records %d", res.Records)
	}

	o2 := testOptions(t)
	o2.Mode = Async
	l = mustOpen(t, o2)
	appendN(t, l, 0, 200)
	l.Close() // flushes
	if res := mustVerify(t, o2); res.Records != 200 {
		t.Fatalf("records %d after Close", res.Records)
	}
}

func TestKeyRotation(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	first := l.KeyID()
	firstKeys := l.PublicKeys()
	appendN(t, l, 0, 3)
	kid, err := l.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if kid == first || l.KeyID() != kid {
		t.Fatalf("rotate: %s -> %s (current %s)", first, kid, l.KeyID())
	}
	rc := appendN(t, l, 3, 2)
	if _, err := VerifyReceipt(rc[0].Header, KeySet{kid: l.PublicKeys()[kid]}); err != nil {
		t.Fatalf("receipt after rotation: %v", err)
	}
	if len(l.PublicKeys()) != 2 {
		t.Fatalf("JWKS keys %d", len(l.PublicKeys()))
	}
	l.Close()
	// Restart keeps the new key.
	l = mustOpen(t, o)
	if l.KeyID() != kid {
		t.Fatalf("after restart kid %s, want %s", l.KeyID(), kid)
	}
	appendN(t, l, 5, 1)
	l.Close()
	// Only the first key is needed: the rotation record hands over.
	res, err := Verify(o.Dir, firstKeys)
	if err != nil || res.Problem != nil {
		t.Fatalf("verify with first key: %v %v", err, res.Problem)
	}
	if res.Records != 7 || len(res.KeyIDs) != 2 || res.KeyIDs[1] != kid {
		t.Fatalf("result %+v", res)
	}
}

func TestReaderFollows(t *testing.T) {
	o := testOptions(t)
	o.SegmentMaxBytes = 2 << 10
	l := mustOpen(t, o)
	defer l.Close()
	appendN(t, l, 0, 3)
	r := NewReader(o.Dir)
	defer r.Close()
	var got []uint64
	read := func() {
		for {
			e, err := r.Next()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, e.Record.Index)
		}
	}
	read()
	appendN(t, l, 3, 10) // crosses segments
	read()
	if len(got) != 13 {
		t.Fatalf("read %v", got)
	}
	for i, s := range got {
		if s != uint64(i) {
			t.Fatalf("read %v", got)
		}
	}
}

// metric is the first series of the metric name in g.
func metric(t testing.TB, g prometheus.Gatherer, name string) *dto.Metric {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0]
		}
	}
	t.Fatalf("metric %s not found", name)
	return nil
}

func TestAppendIgnoresCancellationAndRejectsForgedKinds(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rc, err := l.Append(ctx, sampleRecord(0))
	if err != nil || rc.Index != 0 {
		t.Fatalf("Append with a cancelled context: %v %+v", err, rc)
	}
	forged := sampleRecord(1)
	forged.Kind = KindKeyRotation
	forged.KeyRotation = &KeyRotation{NewKeyID: "x", NewKey: "y"}
	if _, err := l.Append(context.Background(), forged); err == nil {
		t.Fatal("Append accepted a key_rotation record")
	}
	r := sampleRecord(2)
	r.Decision.Reasons = nil
	rc, err = l.Append(context.Background(), r)
	if err != nil || rc.Index != 1 {
		t.Fatalf("%v %+v", err, rc)
	}
	l.Close()
	if records, _, _ := logLines(t, o.Dir); !strings.Contains(string(records[1]), `"reasons":[]`) {
		t.Fatalf(`reasons not encoded as []: %s`, records[1])
	}
	if _, err := l.Append(context.Background(), sampleRecord(3)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close = %v", err)
	}
	mustVerify(t, o)
}

// In async mode a write failure keeps the queued (already acknowledged)
// records and writes them once the disk recovers; new appends are refused
// meanwhile.
func TestAsyncKeepsQueuedRecordsAcrossFailure(t *testing.T) {
	o := testOptions(t)
	o.Mode = Async
	fs := &faultyFS{}
	o.openFile = fs.open
	l := mustOpen(t, o)
	appendN(t, l, 0, 2)
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		durable := l.durNext
		l.mu.Unlock()
		if durable == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("first records not written")
		}
		time.Sleep(time.Millisecond)
	}
	fs.broken.Store(true)
	if _, err := l.Append(context.Background(), sampleRecord(2)); err != nil {
		t.Fatalf("async Append is acknowledged when queued: %v", err)
	}
	for l.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("log stayed ready on a failing disk")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := l.Append(context.Background(), sampleRecord(3)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Append while failing = %v", err)
	}
	fs.broken.Store(false)
	waitReady(t, l)
	appendN(t, l, 4, 1)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	res := mustVerify(t, o)
	if res.Records != 4 {
		t.Fatalf("records %d, want 4 (2 before, the queued one, 1 after)", res.Records)
	}
}

// waitSequenced waits until n appends have been sequenced (they may still
// be waiting for their flush).
func waitSequenced(t *testing.T, l *Log, n uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		done := l.next == n
		l.mu.Unlock()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("appends not sequenced")
		}
		time.Sleep(time.Millisecond)
	}
}
