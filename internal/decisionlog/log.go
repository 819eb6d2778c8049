package decisionlog

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/durable"
)

// Sentinel errors callers branch on.
var (
	// ErrUnavailable means the record was not (durably) written; the caller
	// must deny with reason decision_log_unavailable.
	ErrUnavailable = errors.New("decision log unavailable")
	// ErrBufferFull (async mode) wraps ErrUnavailable.
	ErrBufferFull = fmt.Errorf("%w: async buffer full", ErrUnavailable)
	// ErrClosed is returned after Close; it wraps ErrUnavailable.
	ErrClosed = fmt.Errorf("%w: log closed", ErrUnavailable)
	// ErrCorrupt means Open found damage it must not repair by itself.
	ErrCorrupt = errors.New("decision log corrupt")
)

// Mode is the durability mode.
type Mode int

const (
	// Sync (default): Append returns after the record is fsynced.
	Sync Mode = iota
	// Async means Append returns once the record is signed and queued; records
	// queued but not yet fsynced are lost on a crash or a write failure.
	Async
)

// ParseMode parses "sync" or "async".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "", "sync":
		return Sync, nil
	case "async":
		return Async, nil
	}
	return Sync, fmt.Errorf("decision log mode %q: want sync or async", s)
}

func (m Mode) String() string {
	if m == Async {
		return "async"
	}
	return "sync"
}

// Defaults for Options.
const (
	DefaultName            = "agentauthz"
	DefaultAsyncBuffer     = 10000
	DefaultSegmentMaxBytes = 64 << 20
	DefaultSegmentMaxAge   = 24 * time.Hour
)

// maxWriteBytes caps one write+fdatasync cycle of the writer. A batch
// larger than this is written in several consecutive cycles (split between
// records) before its appenders are woken. The cap bounds what a power loss
// can leave torn: the bytes of the one write in flight, which Open may then
// cut off as a torn batch (see scanSegment). A record (MaxRecordBytes and
// its LF) always fits in one cycle.
const maxWriteBytes = 4 << 20

var _ [maxWriteBytes - MaxRecordBytes - 1]struct{} // compile-time check: a record fits in one write

// Options configure Open.
type Options struct {
	Dir             string        // segment directory, e.g. <data>/log
	KeyDir          string        // signing keys, e.g. <data>/keys
	Name            string        // log/instance name written into every record; default DefaultName
	Mode            Mode          // Sync (default) or Async
	AsyncBuffer     int           // Async: max records queued but not yet durable; default DefaultAsyncBuffer
	SegmentMaxBytes int64         // rotate when a segment would grow past this; also the size preallocated (twice: the segment written and the next); default DefaultSegmentMaxBytes
	SegmentMaxAge   time.Duration // rotate a segment older than this; default DefaultSegmentMaxAge
	Logger          hclog.Logger  // default: a null logger
	Registerer      prometheus.Registerer
	Now             func() time.Time // default time.Now

	// Test hooks.
	openFile   openFunc // segments (and the prepared one), the probe and side files
	retryMin   time.Duration
	prepHook   func(stop <-chan struct{}) error // before each preparation of a segment
	maxWrite   int                              // bytes per write+fdatasync cycle (and torn batch bound); default maxWriteBytes
	noPrealloc bool                             // no preparer: every segment appended to, up to SegmentMaxBytes (the benchmarks' baseline)
}

// batch is a group of consecutive records committed by one write and
// fdatasync (per maxWrite bytes), with one checkpoint per MaxBatch of them.
type batch struct {
	lines  [][]byte // record lines, without LF
	leaves []Hash
	first  uint64     // index of lines[0]
	rot    []rotation // key rotations among the records
	out    [][]byte   // what the writer writes: record and checkpoint lines, each with its LF
	cps    []sealedCP // one per MaxBatch records, set before signed is closed
	last   []byte     // the signed note of the last checkpoint
	signed chan struct{}
	done   chan struct{}
	err    error
}

// rotation is a key_rotation record at lines[idx] of a batch.
type rotation struct {
	idx int
	key *signingKey
}

// sealedCP is a checkpoint of a batch, with what receipts need.
type sealedCP struct {
	cp  Checkpoint
	lv  levels
	sig []byte // key hash ‖ signature
}

func newBatch() *batch { return &batch{signed: make(chan struct{}), done: make(chan struct{})} }

// receipt builds the receipt of the record at lines[i] (after signed).
func (b *batch) receipt(i int) Receipt {
	c := &b.cps[i/MaxBatch]
	j := i % MaxBatch
	var proof [7]Hash // MaxBatch = 2^7
	r := CompactReceipt{Checkpoint: c.cp, Index: b.first + uint64(i), RecordHash: b.leaves[i],
		Proof: c.lv.appendProof(proof[:0], j), KeyHash: binary.BigEndian.Uint32(c.sig), Signature: c.sig[4:]}
	return Receipt{Index: r.Index, Hash: r.RecordHash, Header: r.Encode()}
}

// Log is an open decision log. It is safe for concurrent use.
type Log struct {
	opts    Options
	logger  hclog.Logger
	m       *metrics
	lock    *os.File
	closeCh chan struct{}
	wdone   chan struct{}
	prep    *preparer

	mu       sync.Mutex
	cond     *sync.Cond
	next     uint64 // the next leaf index
	key      *signingKey
	keys     map[string]*signingKey
	durNext  uint64
	durKey   *signingKey
	open     *batch
	inflight int
	failed   error
	closing  bool

	// The last durable signed checkpoint (GET /checkpoint).
	latest atomic.Pointer[[]byte]

	// Owned by the writer goroutine (and Close after it ends). Records are
	// written in place at segSize; a preallocated segment holds zeros from
	// there to segAlloc.
	seg        segmentFile
	segName    string
	segSize    int64 // bytes of records written
	segDurable int64 // bytes of records flushed
	segAlloc   int64 // preallocated length (the file's size when taken); 0 when appended to
	segDirty   int64 // end of the furthest write attempted (a failed write may have left bytes up to here)
	segStart   time.Time
	wbuf       []byte
	tree       *Tree       // the tree with every sealed batch
	wkey       *signingKey // signs the next checkpoint
	signer     *noteSigner // wkey's, kept while wkey stays
	hbuf       []byte      // scratch for record hashes
	durTree    *Tree       // the tree at the last durable checkpoint
	durWKey    *signingKey
}

// Open opens (creating if needed) the log in opts.Dir, recovers from a
// crash (a torn last record or batch is cut off, its bytes kept in a
// .torn-* side file, and logged), and continues the sequence and the hash
// chain.
func Open(opts Options) (*Log, error) {
	if opts.Dir == "" || opts.KeyDir == "" {
		return nil, errors.New("decision log: Dir and KeyDir are required")
	}
	if opts.Name == "" {
		opts.Name = DefaultName
	}
	if !validOrigin(opts.Name) {
		return nil, fmt.Errorf("decision log name %q: want 1 to %d printable ASCII characters without spaces, '+', '\"' or '\\' (it is the checkpoint origin and the note key name)", opts.Name, maxOriginBytes)
	}
	if opts.AsyncBuffer <= 0 {
		opts.AsyncBuffer = DefaultAsyncBuffer
	}
	if opts.SegmentMaxBytes <= 0 {
		opts.SegmentMaxBytes = DefaultSegmentMaxBytes
	}
	if opts.SegmentMaxAge <= 0 {
		opts.SegmentMaxAge = DefaultSegmentMaxAge
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.openFile == nil {
		opts.openFile = osOpenFile
	}
	if opts.retryMin <= 0 {
		opts.retryMin = 100 * time.Millisecond
	}
	if opts.maxWrite <= 0 {
		opts.maxWrite = maxWriteBytes
	}
	if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("decision log dir: %w", err)
	}
	if err := os.MkdirAll(opts.KeyDir, 0o700); err != nil {
		return nil, fmt.Errorf("decision log key dir: %w", err)
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("decision log metrics: %w", err)
	}
	l := &Log{
		opts:    opts,
		logger:  opts.Logger,
		m:       m,
		closeCh: make(chan struct{}),
		wdone:   make(chan struct{}),
		open:    newBatch(),
	}
	l.cond = sync.NewCond(&l.mu)
	if l.lock, err = lockDir(opts.Dir); err != nil {
		return nil, err
	}
	if err := l.recoverOnOpen(); err != nil {
		l.lock.Close()
		return nil, err
	}
	l.durNext, l.durKey = l.next, l.key
	l.durTree, l.durWKey = l.tree.Clone(), l.wkey
	l.prep = newPreparer(opts, l.logger)
	l.prep.start()
	l.m.ready.Set(1)
	go l.run()
	return l, nil
}

// lockDir takes an exclusive advisory lock so two processes never append to
// the same log.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("decision log lock: %w", err)
	}
	if err := lockFile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("decision log %s is in use by another process: %w", dir, err)
	}
	return f, nil
}

// Append appends rec as the next leaf of the log's Merkle tree. It assigns
// rec.Index and Log (and Time, when zero). In Sync mode it returns after
// the record and the checkpoint that covers it are on disk; in Async mode
// once that checkpoint is signed (it may still be lost in a crash). The
// receipt proves the record against that checkpoint. Cancelling ctx does
// not abandon the record: callers pass context.WithoutCancel and Append
// never drops a record it has sequenced because a context ended.
// Failures wrap ErrUnavailable (deny with decision_log_unavailable).
//
// Decisions (Kind "" or KindDecision), responses (KindResponse, with
// Response) and other kinds (with Data) are appended alike; only Rotate
// writes KindKeyRotation.
func (l *Log) Append(ctx context.Context, rec *Record) (Receipt, error) {
	_ = ctx // deliberately not consulted, see above
	if rec != nil && rec.Kind != "" && (rec.Kind == KindKeyRotation || !validKind(rec.Kind)) {
		// A forged hand-over would send verifiers to a key the log does
		// not sign with.
		l.m.appends.WithLabelValues("invalid").Inc()
		return Receipt{}, fmt.Errorf("decision log: Append cannot write records of kind %q", rec.Kind)
	}
	if rec != nil && (rec.Kind == KindResponse) != (rec.Response != nil) {
		l.m.appends.WithLabelValues("invalid").Inc()
		return Receipt{}, errors.New("decision log: a response record needs its response, and only it may carry one")
	}
	if rec != nil && len(rec.Data) > 0 && (len(rec.Data) > MaxDataBytes || !json.Valid(rec.Data) || rec.Data[0] != '{' || !utf8.Valid(rec.Data)) {
		l.m.appends.WithLabelValues("invalid").Inc()
		return Receipt{}, fmt.Errorf("decision log: record data must be a JSON object in UTF-8 of at most %d bytes", MaxDataBytes)
	}
	return l.append(rec, nil, l.opts.Mode == Sync)
}

func (l *Log) append(rec *Record, rotateTo *signingKey, wait bool) (Receipt, error) {
	start := time.Now()
	if rec == nil {
		l.m.appends.WithLabelValues("invalid").Inc()
		return Receipt{}, errors.New("decision log: nil record")
	}
	if rec.Time.IsZero() {
		rec.Time = l.opts.Now()
	}
	rec.Time = rec.Time.UTC().Truncate(time.Microsecond)
	rec.Log = l.opts.Name
	rec.Seq, rec.KeyID, rec.Prev = 0, "", ""
	if rec.Decision.Reasons == nil {
		rec.Decision.Reasons = []string{} // "reasons": [] rather than null
	}
	if boundRecord(rec) {
		rec.Truncated = true
	}
	prep, err := prepareRecord(rec)
	if err != nil {
		l.m.appends.WithLabelValues("invalid").Inc()
		return Receipt{}, fmt.Errorf("decision log: encode record: %w", err)
	}
	l.mu.Lock()
	switch {
	case l.closing:
		l.mu.Unlock()
		l.m.appends.WithLabelValues("closed").Inc()
		return Receipt{}, ErrClosed
	case l.failed != nil:
		err := l.failed
		l.mu.Unlock()
		l.m.appends.WithLabelValues("unavailable").Inc()
		return Receipt{}, err
	case l.opts.Mode == Async && l.inflight >= l.opts.AsyncBuffer:
		l.mu.Unlock()
		l.m.appends.WithLabelValues("buffer_full").Inc()
		return Receipt{}, ErrBufferFull
	}
	rec.Index = l.next
	line := prep.line(rec.Index, l.opts.Name)
	if len(line) > MaxRecordBytes {
		l.mu.Unlock()
		l.m.appends.WithLabelValues("invalid").Inc()
		return Receipt{}, fmt.Errorf("decision log: encode record: record longer than %d bytes", MaxRecordBytes)
	}
	b := l.open
	idx := len(b.lines)
	if idx == 0 {
		b.first = rec.Index
		l.cond.Broadcast()
	}
	b.lines = append(b.lines, line)
	l.next++
	if rotateTo != nil {
		b.rot = append(b.rot, rotation{idx: idx, key: rotateTo})
		l.key = rotateTo
		l.keys[rotateTo.kid] = rotateTo
	}
	l.inflight++
	l.mu.Unlock()

	wake := b.done
	if !wait {
		wake = b.signed // async: the checkpoint is signed, not yet durable
	}
	<-wake
	if b.err != nil {
		l.m.appends.WithLabelValues("unavailable").Inc()
		return Receipt{}, b.err
	}
	rc := b.receipt(idx)
	l.m.appendsOK.Inc()
	l.m.latency.Observe(time.Since(start).Seconds())
	return rc, nil
}

// Rotate generates a new signing key and hands the log over to it with a
// key_rotation record signed by the old key. It returns the new kid once
// the rotation record is durable (in either mode).
func (l *Log) Rotate() (string, error) {
	k, err := generateSigningKey(l.opts.KeyDir)
	if err != nil {
		return "", err
	}
	rec := &Record{
		Kind:        KindKeyRotation,
		KeyRotation: &KeyRotation{NewKeyID: k.kid, NewKey: b64.EncodeToString(k.public())},
		Decision:    Decision{Reasons: []string{}},
	}
	if rec.KeyRotation.NoteKey, err = NoteVerifierKey(l.opts.Name, k.public()); err != nil {
		return "", err
	}
	if _, err := l.append(rec, k, true); err != nil {
		return "", fmt.Errorf("append key rotation record: %w", err)
	}
	if err := durable.WriteFile(filepath.Join(l.opts.KeyDir, currentKeyFile), []byte(k.kid+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write current key id: %w", err)
	}
	l.logger.Info("rotated decision log signing key", "kid", k.kid, "index", rec.Index)
	return k.kid, nil
}

// Ready reports whether the log accepts appends.
func (l *Log) Ready() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed == nil && !l.closing
}

// Err returns why the log is not ready, or nil.
func (l *Log) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return ErrClosed
	}
	return l.failed
}

// KeyID returns the kid of the key that signs new records.
func (l *Log) KeyID() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.key.kid
}

// ResponseSigner returns the id of the key that signs new checkpoints and a
// function that signs an RFC 9421 signature base (a signed response,
// docs/responses.md) with that key, so responses carry the published key's
// id. The uses cannot be confused: a checkpoint's note text starts with the
// log's name (validOrigin: never '"'), a v1 JWS signing input is base64url
// and '.' only, while a signature base always starts with '"' (a quoted
// component name); anything else is refused.
func (l *Log) ResponseSigner() (kid string, sign func(base []byte) ([]byte, error)) {
	l.mu.Lock()
	k := l.key
	l.mu.Unlock()
	return k.kid, func(base []byte) ([]byte, error) {
		if len(base) == 0 || base[0] != '"' {
			return nil, errors.New("decision log: not an HTTP message signature base")
		}
		return voi.Sign(voi.PrivateKey(k.priv), base), nil
	}
}

// PublicKeys returns every key known to the log (all keys in KeyDir).
func (l *Log) PublicKeys() KeySet {
	l.mu.Lock()
	defer l.mu.Unlock()
	ks := KeySet{}
	for _, k := range l.keys {
		ks.Add(k.public())
	}
	return ks
}

// Checkpoint returns the latest durable signed checkpoint (a C2SP signed
// note), or nil while the log is empty.
func (l *Log) Checkpoint() []byte {
	if p := l.latest.Load(); p != nil {
		return *p
	}
	return nil
}

// CheckpointHandler serves Checkpoint at GET /checkpoint, as C2SP
// tlog-witness witnesses and monitors fetch it: text/plain, the signed
// note; 404 while the log is empty. It reveals no record.
func (l *Log) CheckpointHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		cp := l.Checkpoint()
		if cp == nil {
			http.Error(w, "no checkpoint yet: the log is empty", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(cp)
	})
}

// JWKSHandler serves PublicKeys as an RFC 7517 JWK Set.
func (l *Log) JWKSHandler() http.Handler { return jwksHandler(l.PublicKeys) }

// Close flushes every queued record, stops the writer, seals the segment
// (cuts its zero padding off and fsyncs it) and closes files. A prepared
// next segment stays on disk for the next Open.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		return nil
	}
	l.closing = true
	close(l.closeCh)
	l.cond.Broadcast()
	l.mu.Unlock()
	<-l.wdone
	l.prep.close()
	var err error
	if l.seg != nil {
		if err = l.sealSegment(); err != nil {
			l.logger.Error("decision log: could not seal the last segment; the next Open will", "segment", l.segName, "error", err)
			l.seg.Close()
			l.seg = nil
		}
	}
	l.m.ready.Set(0)
	if lerr := l.lock.Close(); err == nil {
		err = lerr
	}
	l.mu.Lock()
	failed := l.failed
	l.mu.Unlock()
	if failed != nil && err == nil {
		err = failed
	}
	return err
}

// run is the single writer: it takes the open batch, seals it (leaf
// hashes, the tree, one signed checkpoint per MaxBatch records), writes it
// (one write and one fdatasync per maxWrite bytes), and wakes its
// appenders.
func (l *Log) run() {
	defer close(l.wdone)
	for {
		l.mu.Lock()
		for len(l.open.lines) == 0 && !l.closing {
			l.cond.Wait()
		}
		if len(l.open.lines) == 0 {
			l.mu.Unlock()
			return
		}
		b := l.open
		l.open = newBatch()
		l.mu.Unlock()

		err := l.seal(b)
		if err == nil {
			close(b.signed)
			err = l.write(b)
			if err != nil && l.opts.Mode == Async {
				// Async records were acknowledged once their checkpoint
				// was signed: keep them and retry until the disk takes
				// them (or Close gives up).
				err = l.retryAsync(b, err)
			}
		}
		l.mu.Lock()
		if err == nil {
			l.durNext, l.durKey = b.first+uint64(len(b.lines)), l.keyAt(b)
			l.inflight -= len(b.lines)
			l.mu.Unlock()
			l.durTree.set(l.tree)
			l.durWKey = l.wkey
			l.latest.Store(&b.last)
			l.m.batch.Observe(float64(len(b.lines)))
			close(b.done)
			continue
		}
		// Fail this batch and everything sequenced after it, and roll
		// the tree back to the last durable checkpoint: none of these was
		// acknowledged in sync mode.
		l.failed = fmt.Errorf("%w: %v", ErrUnavailable, err)
		failed := []*batch{b}
		if len(l.open.lines) > 0 {
			failed = append(failed, l.open)
			l.open = newBatch()
		}
		l.next, l.key = l.durNext, l.durKey
		l.inflight = 0
		ferr := l.failed
		l.mu.Unlock()
		l.tree.set(l.durTree)
		l.wkey = l.durWKey
		l.m.ready.Set(0)
		n := 0
		for _, fb := range failed {
			n += len(fb.lines)
			fb.err = ferr
			select {
			case <-fb.signed:
			default:
				close(fb.signed)
			}
			close(fb.done)
		}
		l.logger.Error("decision log write failed; denying until it recovers", "error", err, "records_failed", n, "durable_size", l.durNext)
		l.recoverWriter()
	}
}

// keyAt is the appenders' current key as of the end of b: the key of the
// last rotation in b, or the durable key before it.
func (l *Log) keyAt(b *batch) *signingKey {
	if len(b.rot) > 0 {
		return b.rot[len(b.rot)-1].key
	}
	return l.durKey
}

// seal hashes b's records into the tree and signs one checkpoint per
// MaxBatch of them, filling b.leaves, b.cps and b.out. A checkpoint is
// signed by the key in force when its records began: a rotation record
// hands over from the next checkpoint on.
func (l *Log) seal(b *batch) error {
	b.leaves = make([]Hash, len(b.lines))
	size := 0
	for i, ln := range b.lines {
		b.leaves[i] = leafHash(&l.hbuf, ln)
		size += len(ln) + 1
	}
	n := (len(b.lines) + MaxBatch - 1) / MaxBatch
	b.cps = make([]sealedCP, 0, n)
	b.out = make([][]byte, 0, len(b.lines)+n)
	rot := 0
	for start := 0; start < len(b.lines); start += MaxBatch {
		end := min(start+MaxBatch, len(b.lines))
		lv := buildLevels(b.leaves[start:end])
		for _, h := range b.leaves[start:end] {
			l.tree.Append(h)
		}
		cp := Checkpoint{Origin: l.opts.Name, Size: l.tree.Size(), Root: l.tree.Root(),
			BatchStart: b.first + uint64(start), BatchRoot: lv.root()}
		if l.signer == nil || l.signer.key != l.wkey {
			l.signer = newNoteSigner(l.opts.Name, l.wkey)
		}
		signed, sig, err := signCheckpoint(cp, l.signer)
		if err != nil {
			return fmt.Errorf("sign checkpoint: %w", err)
		}
		b.cps = append(b.cps, sealedCP{cp: cp, lv: lv, sig: sig})
		b.last = signed
		for _, ln := range b.lines[start:end] {
			b.out = append(b.out, append(ln, '\n'))
		}
		b.out = append(b.out, append(encodeCheckpointLine(signed, l.tree.hashes), '\n'))
		for ; rot < len(b.rot) && b.rot[rot].idx < end; rot++ {
			l.wkey = b.rot[rot].key
		}
	}
	return nil
}

// retryAsync marks the log failed (new appends are refused), waits for the
// disk to recover and writes b again, until it succeeds or the log closes.
func (l *Log) retryAsync(b *batch, err error) error {
	for err != nil {
		l.mu.Lock()
		l.failed = fmt.Errorf("%w: %v", ErrUnavailable, err)
		closing := l.closing
		l.mu.Unlock()
		l.m.ready.Set(0)
		if closing {
			return err
		}
		l.logger.Error("decision log write failed; holding queued records and refusing new ones until it recovers", "error", err, "records_held", len(b.lines))
		l.recoverWriter()
		err = l.write(b)
	}
	return nil
}

// write writes b at the end of the records of the current segment (rotating
// first if due): one write and one fdatasync per at most maxWrite bytes,
// each write issued only after the previous fdatasync returned, so at most
// one write is ever in flight. The batch is durable (segDurable moves) only
// once all of it is; on a failure the whole batch fails, and restoreTail
// takes back whatever of it reached the segment.
func (l *Log) write(b *batch) error {
	size := 0
	for _, ln := range b.out {
		size += len(ln)
	}
	now := l.opts.Now()
	if l.seg != nil && l.segDurable > 0 &&
		(l.segDurable+int64(size) > l.segLimit() || now.Sub(l.segStart) >= l.opts.SegmentMaxAge) {
		if err := l.sealSegment(); err != nil {
			return fmt.Errorf("seal segment %s: %w", l.segName, err)
		}
	}
	if l.seg == nil {
		if err := l.startSegment(b.first, now); err != nil {
			return err
		}
	}
	for i := 0; i < len(b.out); {
		buf := l.wbuf[:0]
		for ; i < len(b.out) && (len(buf) == 0 || len(buf)+len(b.out[i]) <= l.opts.maxWrite); i++ {
			buf = append(buf, b.out[i]...)
		}
		l.wbuf = buf
		off := l.segSize
		l.segDirty = max(l.segDirty, off+int64(len(buf)))
		n, err := l.seg.WriteAt(buf, off)
		l.segSize += int64(n)
		if err != nil {
			return fmt.Errorf("write segment %s: %w", l.segName, err)
		}
		if err := l.seg.Datasync(); err != nil {
			return fmt.Errorf("fsync segment %s: %w", l.segName, err)
		}
	}
	l.segDurable = l.segSize
	return nil
}

// segLimit is the size at which the current segment rotates.
func (l *Log) segLimit() int64 {
	if l.segAlloc == 0 && !l.opts.noPrealloc {
		return min(l.opts.SegmentMaxBytes, fallbackSegmentBytes)
	}
	return l.opts.SegmentMaxBytes
}

// startSegment opens the segment whose first record is firstSeq: the
// prepared file if one is ready, else a new empty file that is appended to.
// Any file already under that name holds only bytes of a failed write (its
// first seq is not durable), so it is replaced.
func (l *Log) startSegment(firstSeq uint64, now time.Time) error {
	name := segmentName(firstSeq)
	path := filepath.Join(l.opts.Dir, name)
	f, alloc, err := l.prep.take(path)
	if err != nil {
		l.logger.Warn("decision log: could not use the prepared segment; appending without preallocation", "segment", name, "error", err)
	}
	if f == nil {
		if f, err = l.opts.openFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640); err != nil {
			return fmt.Errorf("create segment: %w", err)
		}
		alloc = 0
	}
	if err := durable.SyncDir(l.opts.Dir); err != nil {
		f.Close()
		return fmt.Errorf("sync log dir: %w", err)
	}
	kind := "preallocated"
	if alloc == 0 {
		kind = "appended"
	}
	l.m.segments.WithLabelValues(kind).Inc()
	l.seg, l.segName, l.segStart = f, name, now
	l.segSize, l.segDurable, l.segAlloc, l.segDirty = 0, 0, alloc, 0
	return nil
}

// sealSegment ends the current segment: it cuts the file back to its records
// (dropping the zero padding, and any bytes of a failed write), fsyncs it
// and closes it. Only the segment being written, or the last one after a
// crash, ever ends in padding.
func (l *Log) sealSegment() error {
	if max(l.segAlloc, l.segDirty) > l.segDurable {
		if err := l.seg.Truncate(l.segDurable); err != nil {
			return err
		}
		if err := l.seg.Sync(); err != nil {
			return err
		}
		l.segAlloc, l.segDirty, l.segSize = 0, l.segDurable, l.segDurable
	}
	if err := l.seg.Close(); err != nil {
		l.logger.Warn("closing sealed segment", "segment", l.segName, "error", err)
	}
	l.seg, l.segName = nil, ""
	return nil
}

// recoverWriter retries with backoff until the segment is back at its last
// durable length and the directory takes a synced write, or Close.
func (l *Log) recoverWriter() {
	wait := l.opts.retryMin
	for {
		t := time.NewTimer(wait)
		select {
		case <-l.closeCh:
			t.Stop()
			return
		case <-t.C:
		}
		err := l.tryRecover()
		if err == nil {
			l.mu.Lock()
			l.failed = nil
			l.mu.Unlock()
			l.m.ready.Set(1)
			l.logger.Info("decision log writable again", "next_index", l.durNext)
			return
		}
		l.logger.Debug("decision log still unavailable", "error", err)
		if wait *= 2; wait > 5*time.Second {
			wait = 5 * time.Second
		}
	}
}

func (l *Log) tryRecover() error {
	if l.seg == nil && l.segName != "" {
		f, err := l.opts.openFile(filepath.Join(l.opts.Dir, l.segName), os.O_WRONLY, 0o640)
		if err != nil {
			return err
		}
		l.seg = f
	}
	if l.seg != nil {
		if err := l.restoreTail(); err != nil {
			l.seg.Close()
			l.seg = nil
			return err
		}
	}
	probe := filepath.Join(l.opts.Dir, ".probe")
	f, err := l.opts.openFile(probe, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(make([]byte, 4096), 0)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	os.Remove(probe)
	return err
}

// restoreTail puts the segment back as it was after its last durable batch:
// where a failed write may have left bytes, a preallocated segment gets its
// zeros back and an appended one is cut back; then it is fsynced.
func (l *Log) restoreTail() error {
	if l.segDirty > l.segDurable {
		if l.segAlloc > l.segDurable {
			if err := zeroFill(l.seg, l.segDurable, min(l.segDirty, l.segAlloc)); err != nil {
				return err
			}
		}
		if end := max(l.segAlloc, l.segDurable); l.segDirty > end {
			if err := l.seg.Truncate(end); err != nil {
				return err
			}
		}
	}
	if err := l.seg.Sync(); err != nil {
		return err
	}
	l.segSize, l.segDirty = l.segDurable, l.segDurable
	return nil
}
