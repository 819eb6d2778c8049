package decisionlog

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
	"github.com/prometheus/client_golang/prometheus"
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
	openFile openFunc // segments (and the prepared one), the probe and side files
	retryMin time.Duration
	prepHook func(stop <-chan struct{}) error // before each preparation of a segment
	maxWrite int                              // bytes per write+fdatasync cycle (and torn batch bound); default maxWriteBytes
}

// batch is a group of consecutive records committed by one fsync.
type batch struct {
	lines    [][]byte
	firstSeq uint64
	lastSeq  uint64
	lastHash string
	nextKey  *signingKey // the key that signs after lastSeq
	unsigned int
	done     chan struct{}
	err      error
}

func newBatch() *batch { return &batch{done: make(chan struct{})} }

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
	next     uint64
	prevHash string
	key      *signingKey
	keys     map[string]*signingKey
	durSeq   uint64
	durHash  string
	durKey   *signingKey
	open     *batch
	inflight int
	failed   error
	closing  bool
	payload  []byte // scratch for the record being sequenced

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
	l.durSeq, l.durHash, l.durKey = l.next-1, l.prevHash, l.key
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
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("decision log %s is in use by another process: %w", dir, err)
	}
	return f, nil
}

// recoverOnOpen finds the last complete record, cuts the last segment back
// to its end (dropping a torn record or a torn batch, kept in a side file,
// and the zero padding: the segment is sealed), and sets next, prevHash and
// key. The first batch after Open starts a new segment.
func (l *Log) recoverOnOpen() error {
	var err error
	if l.keys, err = loadSigningKeys(l.opts.KeyDir); err != nil {
		return err
	}
	if err := checkKeyPerms(l.opts.KeyDir); err != nil {
		return err
	}
	segs, err := listSegments(l.opts.Dir)
	if err != nil {
		return fmt.Errorf("list segments: %w", err)
	}
	for i := len(segs) - 1; i >= 0; i-- {
		name := segs[i]
		path := filepath.Join(l.opts.Dir, name)
		// Only the last segment can have been torn by a crash: a segment
		// is sealed (cut back to its records and fsynced) before the next
		// one is created.
		last, good, err := scanSegment(path, name, i == len(segs)-1, l.opts.maxWrite, l.opts.openFile)
		var tail *segmentTail
		if errors.As(err, &tail) {
			switch {
			case tail.batch != nil:
				b := tail.batch
				l.m.recovered.WithLabelValues("torn_batch").Inc()
				l.logger.Error("decision log: cut a torn batch off the end of the log (power loss during a write: zeros where pages never reached the disk, then records of the same write); the cut bytes are kept in side_file",
					"note", "these records were never acknowledged in sync mode (in async mode they were, and are within its loss window) unless the disk itself lost acknowledged data: receipts held by upstreams are the outside check (see docs/decision-log.md)",
					"segment", name, "offset", good, "bytes", tail.torn, "records", b.records, "first_seq", b.firstSeq, "last_seq", b.lastSeq, "side_file", tail.sideFile)
			case tail.torn > 0:
				// An ERROR like the torn batch: bytes were removed from the
				// log, and an operator should know where they went.
				l.m.recovered.WithLabelValues("torn_record").Inc()
				l.logger.Error("decision log: cut a torn record off the end of the log (crash during a write: a partial or undecodable last line); the cut bytes are kept in side_file",
					"note", "that record was never acknowledged in sync mode (in async mode it was, and is within its loss window)",
					"segment", name, "offset", good, "bytes", tail.torn, "side_file", tail.sideFile)
			}
			if tail.padding > 0 {
				l.logger.Info("decision log: sealed the last segment (removed its unwritten zero padding)", "segment", name, "bytes", tail.padding, "offset", good)
			}
		} else if err != nil {
			return err
		}
		if last == nil {
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("remove empty segment: %w", err)
			}
			if err := syncDir(l.opts.Dir); err != nil {
				return fmt.Errorf("sync log dir: %w", err)
			}
			l.logger.Warn("removed segment without a complete record", "segment", name)
			continue
		}
		rec, err := DecodeRecord(last.jws)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCorrupt, name, err)
		}
		k, ok := l.keys[rec.KeyID]
		if !ok {
			return fmt.Errorf("signing key %s of log %s is not in %s", rec.KeyID, l.opts.Dir, l.opts.KeyDir)
		}
		if _, err := VerifyRecord(last.jws, KeySet{k.kid: k.public()}); err != nil {
			return fmt.Errorf("%w: last record %d: %v", ErrCorrupt, rec.Seq, err)
		}
		if pub, ok := rotationKey(rec); ok {
			if k, ok = l.keys[KeyID(pub)]; !ok {
				return fmt.Errorf("signing key %s announced by record %d is not in %s", KeyID(pub), rec.Seq, l.opts.KeyDir)
			}
		}
		l.next, l.prevHash, l.key = rec.Seq+1, ChainHash(last.jws), k
		return nil
	}
	// Empty log: use the current key, the only key, or a new one.
	if b, err := readFileLimited(filepath.Join(l.opts.KeyDir, currentKeyFile), 1<<10); err == nil { // a kid is 43 bytes
		l.key = l.keys[strings.TrimSpace(string(b))]
	}
	if l.key == nil && len(l.keys) == 1 {
		for _, k := range l.keys {
			l.key = k
		}
	}
	if l.key == nil {
		k, err := generateSigningKey(l.opts.KeyDir)
		if err != nil {
			return err
		}
		l.keys[k.kid] = k
		l.key = k
		l.logger.Info("generated decision log signing key", "kid", k.kid)
	}
	if err := writeFileDurable(filepath.Join(l.opts.KeyDir, currentKeyFile), []byte(l.key.kid+"\n"), 0o600); err != nil {
		return fmt.Errorf("write current key id: %w", err)
	}
	l.next = 1
	return nil
}

// Append signs rec, chains it, and appends it. It assigns rec.Seq, Log,
// KeyID and Prev (and Time, when zero). In Sync mode it returns after the
// record is on disk; in Async mode once it is queued. Cancelling ctx does
// not abandon the record: callers pass context.WithoutCancel and Append
// never drops a record it has sequenced because a context ended.
// Failures wrap ErrUnavailable (deny with decision_log_unavailable).
func (l *Log) Append(ctx context.Context, rec *Record) (Receipt, error) {
	_ = ctx // deliberately not consulted, see above
	if rec != nil && rec.Kind != "" && rec.Kind != KindDecision && rec.Kind != KindResponse {
		// Only Rotate writes other kinds: a forged hand-over would send
		// verifiers to a key the log does not sign with.
		l.m.appends.WithLabelValues("invalid").Inc()
		return Receipt{}, fmt.Errorf("decision log: Append takes decision and response records, not %q", rec.Kind)
	}
	if rec != nil && (rec.Kind == KindResponse) != (rec.Response != nil) {
		l.m.appends.WithLabelValues("invalid").Inc()
		return Receipt{}, errors.New("decision log: a response record needs its response, and only it may carry one")
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
	key := l.key
	rec.Seq, rec.KeyID, rec.Prev = l.next, key.kid, l.prevHash
	// The payload is only needed until it is base64 encoded into the
	// signing input, so one buffer guarded by mu serves every append.
	l.payload = prep.appendPayload(l.payload[:0], rec.Seq, rec.Log, key.kid, rec.Prev)
	if len(key.header)+2+b64.EncodedLen(len(l.payload))+86 > MaxRecordBytes {
		l.mu.Unlock()
		l.m.appends.WithLabelValues("invalid").Inc()
		return Receipt{}, fmt.Errorf("decision log: encode record: record longer than %d bytes", MaxRecordBytes)
	}
	input := key.signingInput(l.payload)
	hash := chainHashInput(input)
	b := l.open
	idx := len(b.lines)
	b.lines = append(b.lines, nil)
	b.unsigned++
	if idx == 0 {
		b.firstSeq = rec.Seq
	}
	b.lastSeq, b.lastHash = rec.Seq, hash
	l.next++
	l.prevHash = hash
	if rotateTo != nil {
		l.key = rotateTo
		l.keys[rotateTo.kid] = rotateTo
	}
	b.nextKey = l.key
	l.inflight++
	if idx == 0 {
		l.cond.Broadcast()
	}
	l.mu.Unlock()

	// Signing is the expensive part and runs outside the lock, in parallel
	// with other appenders; the chain does not include signatures.
	line, jws := key.finish(input)

	l.mu.Lock()
	b.lines[idx] = line
	b.unsigned--
	if b.unsigned == 0 {
		l.cond.Broadcast()
	}
	l.mu.Unlock()

	if wait {
		<-b.done
		if b.err != nil {
			l.m.appends.WithLabelValues("unavailable").Inc()
			return Receipt{}, b.err
		}
	}
	l.m.appendsOK.Inc()
	l.m.latency.Observe(time.Since(start).Seconds())
	return Receipt{Seq: rec.Seq, JWS: jws}, nil
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
	if _, err := l.append(rec, k, true); err != nil {
		return "", fmt.Errorf("append key rotation record: %w", err)
	}
	if err := writeFileDurable(filepath.Join(l.opts.KeyDir, currentKeyFile), []byte(k.kid+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write current key id: %w", err)
	}
	l.logger.Info("rotated decision log signing key", "kid", k.kid, "seq", rec.Seq)
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

// ResponseSigner returns the id of the key that signs new records and a
// function that signs an RFC 9421 signature base (a signed response,
// docs/responses.md) with that key, so responses carry the published key's
// id. The two uses cannot be confused: a JWS signing input is base64url and
// '.' only, while a signature base always starts with '"' (a quoted
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
		if err = l.seal(); err != nil {
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

// run is the single writer: it takes the open batch, waits until every
// record in it is signed, writes it (one write and one fdatasync per
// maxWrite bytes), and wakes its appenders.
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
		for b.unsigned > 0 {
			l.cond.Wait()
		}
		l.mu.Unlock()

		err := l.write(b)
		if err != nil && l.opts.Mode == Async {
			// Async records were acknowledged when queued: keep them and
			// retry until the disk takes them (or Close gives up).
			err = l.retryAsync(b, err)
		}
		l.mu.Lock()
		if err == nil {
			l.durSeq, l.durHash, l.durKey = b.lastSeq, b.lastHash, b.nextKey
			l.inflight -= len(b.lines)
			l.mu.Unlock()
			l.m.batch.Observe(float64(len(b.lines)))
			close(b.done)
			continue
		}
		// Fail this batch and everything sequenced after it, and roll
		// the chain back to the last durable record: none of these was
		// acknowledged in sync mode.
		l.failed = fmt.Errorf("%w: %v", ErrUnavailable, err)
		failed := []*batch{b}
		if len(l.open.lines) > 0 {
			failed = append(failed, l.open)
			l.open = newBatch()
		}
		l.next, l.prevHash, l.key = l.durSeq+1, l.durHash, l.durKey
		l.inflight = 0
		ferr := l.failed
		l.mu.Unlock()
		l.m.ready.Set(0)
		n := 0
		for _, fb := range failed {
			n += len(fb.lines)
			fb.err = ferr
			close(fb.done)
		}
		l.logger.Error("decision log write failed; denying until it recovers", "error", err, "records_failed", n, "last_durable_seq", l.durSeq)
		l.recoverWriter()
	}
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
	for _, ln := range b.lines {
		size += len(ln)
	}
	now := l.opts.Now()
	if l.seg != nil && l.segDurable > 0 &&
		(l.segDurable+int64(size) > l.segLimit() || now.Sub(l.segStart) >= l.opts.SegmentMaxAge) {
		if err := l.seal(); err != nil {
			return fmt.Errorf("seal segment %s: %w", l.segName, err)
		}
	}
	if l.seg == nil {
		if err := l.startSegment(b.firstSeq, now); err != nil {
			return err
		}
	}
	for i := 0; i < len(b.lines); {
		buf := l.wbuf[:0]
		for ; i < len(b.lines) && (len(buf) == 0 || len(buf)+len(b.lines[i]) <= l.opts.maxWrite); i++ {
			buf = append(buf, b.lines[i]...)
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
	l.prep.progress(l.segDurable)
	return nil
}

// segLimit is the size at which the current segment rotates.
func (l *Log) segLimit() int64 {
	if l.segAlloc == 0 {
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
	f, alloc, err := l.prep.take(path, now)
	if err != nil {
		l.logger.Warn("decision log: could not use the prepared segment; appending without preallocation", "segment", name, "error", err)
	}
	if f == nil {
		if f, err = l.opts.openFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640); err != nil {
			return fmt.Errorf("create segment: %w", err)
		}
		alloc = 0
	}
	if err := syncDir(l.opts.Dir); err != nil {
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

// seal ends the current segment: it cuts the file back to its records
// (dropping the zero padding, and any bytes of a failed write), fsyncs it
// and closes it. Only the segment being written, or the last one after a
// crash, ever ends in padding.
func (l *Log) seal() error {
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
			l.logger.Info("decision log writable again", "next_seq", l.durSeq+1)
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
