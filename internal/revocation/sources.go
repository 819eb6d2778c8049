package revocation

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/agentauthz/agentauthz/internal/filewatch"
)

var errCanceled = context.Canceled

const (
	fetchTimeout       = 30 * time.Second
	watchIdleTimeout   = 45 * time.Second // 3 missed heartbeats of the default publisher
	fileDebounce       = 50 * time.Millisecond
	backoffMin         = 100 * time.Millisecond
	backoffMax         = 5 * time.Second
	watchStableReset   = 10 * time.Second // a stream up this long resets the backoff
	maxSSELineOverhead = 64 << 10
)

func defaultHTTPClient() *http.Client { return NewHTTPClient(nil) }

// NewHTTPClient is the client a Checker uses by default, with tc (may be
// nil) as its TLS configuration, e.g. a replica certificate for the control
// plane's mTLS.
func NewHTTPClient(tc *tls.Config) *http.Client {
	// No overall Timeout: the watch stream is long-lived. Connects and
	// response headers are bounded; fetches carry their own deadline.
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:       tc,
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}}
}

// Run keeps every configured source loaded until ctx is done; call it once.
// It returns nil on cancellation; source failures are logged and counted, never fatal, since
// the previous data stays in force until it goes stale.
func (c *Checker) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("revocation: Run called twice")
	}
	defer c.running.Store(false)
	// A fetch cancelled while dialling leaves the dial running, and the
	// transport parks the new connection as idle: it never sends a request,
	// and the server's graceful shutdown waits 5 s on such a connection
	// (TestRunLeavesNoIdleConnection). Closing idle connections on the way
	// out also makes the transport close any that arrive later.
	defer c.client.CloseIdleConnections()
	g, ctx := errgroup.WithContext(ctx)
	for _, name := range c.order {
		t := c.tenants[name]
		for i, s := range t.sources {
			switch s.kind {
			case kindFile:
				g.Go(func() error { c.runFile(ctx, name, i, s.where, t.cfg.PollInterval); return nil })
			case kindURL:
				g.Go(func() error { c.runURL(ctx, name, i, s.where, t.cfg.PollInterval); return nil })
			case kindWatch:
				g.Go(func() error { c.runWatch(ctx, name, i, s.where, t.cfg.PollInterval); return nil })
			}
		}
	}
	return g.Wait()
}

// runFile re-reads path when it may have changed: on a notification
// (debounced, since a writer produces several) and every interval, which
// also covers file systems without notifications.
func (c *Checker) runFile(ctx context.Context, tenant string, src int, path string, interval time.Duration) {
	path = filepath.Clean(path)
	var last [sha256.Size]byte
	var lastOK bool
	load := func() {
		data, err := readFileLimited(path, c.maxBytes)
		if err != nil {
			c.sourceFailed(tenant, src, err)
			return
		}
		sum := sha256.Sum256(data)
		if sum == last {
			if lastOK {
				c.touch(tenant)
			}
			return
		}
		last = sum
		lastOK = c.apply(tenant, src, data) == nil
	}

	load()
	filewatch.Run(ctx, []string{path}, filewatch.Options{Interval: interval, Debounce: fileDebounce,
		Logger: c.log.With("source", "revocation crl file")}, load)
}

func readFileLimited(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size := int64(-1)
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		size = fi.Size() // if the file changes meanwhile, readLimited still reads it right
	}
	return readLimited(f, max, size)
}

// conditional remembers the validators of the last CRL applied from a URL.
type conditional struct {
	etag, lastModified string
}

func (c *Checker) runURL(ctx context.Context, tenant string, src int, u string, interval time.Duration) {
	var cond conditional
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if err := c.fetchCRL(ctx, tenant, src, u, &cond); err != nil {
			c.sourceFailed(tenant, src, err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// fetchCRL does one conditional GET. A 304 keeps the data in force; a 200 is
// applied like any CRL. Apply errors are logged by apply, so only transport
// and status errors are returned.
func (c *Checker) fetchCRL(ctx context.Context, tenant string, src int, u string, cond *conditional) error {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/pkix-crl")
	if cond.etag != "" {
		req.Header.Set("If-None-Match", cond.etag)
	}
	if cond.lastModified != "" {
		req.Header.Set("If-Modified-Since", cond.lastModified)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		if ctx.Err() != nil && errors.Is(context.Cause(ctx), context.Canceled) {
			return errCanceled
		}
		return fmt.Errorf("fetch crl: %w", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotModified:
		if cond.etag == "" && cond.lastModified == "" {
			return errors.New("fetch crl: 304 without a conditional request")
		}
		c.touch(tenant)
		return nil
	case http.StatusOK:
	default:
		return fmt.Errorf("fetch crl: %s", resp.Status)
	}
	// ContentLength is -1 when unknown (chunked, or decompressed by the
	// transport); when known, the transport delivers exactly that many
	// bytes or an error.
	data, err := readLimited(resp.Body, c.maxBytes, resp.ContentLength)
	if err != nil {
		return fmt.Errorf("fetch crl: %w", err)
	}
	if err := c.apply(tenant, src, data); err != nil {
		// Forget the validators so the next poll fetches the CRL afresh,
		// and an ETag seen again is never taken for one applied.
		*cond = conditional{}
		return refusedError{err}
	}
	*cond = conditional{etag: resp.Header.Get("ETag"), lastModified: resp.Header.Get("Last-Modified")}
	return nil
}

// refusedError is a CRL that was fetched but refused; apply has logged and
// counted it already.
type refusedError struct{ err error }

func (e refusedError) Error() string { return e.err.Error() }
func (e refusedError) Unwrap() error { return e.err }

// runWatch holds the watch stream open, reconnecting with jittered
// exponential backoff. While it is down, the tenant's CRL on the same server
// is polled every interval (and at once when the stream drops).
func (c *Checker) runWatch(ctx context.Context, tenant string, src int, watchURL string, interval time.Duration) {
	wu, crlURL, err := watchURLs(watchURL, tenant)
	if err != nil {
		c.sourceFailed(tenant, src, err)
		return
	}
	kick := make(chan struct{}, 1)
	var connected atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		var cond conditional
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			if !connected.Load() {
				if err := c.fetchCRL(ctx, tenant, src, crlURL, &cond); err != nil {
					c.sourceFailed(tenant, src, err)
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			case <-kick:
			}
		}
	}()
	defer func() { <-done }()

	backoff := backoffMin
	for ctx.Err() == nil {
		start := time.Now()
		err := c.stream(ctx, tenant, src, wu, crlURL, &connected)
		connected.Store(false)
		if ctx.Err() != nil {
			return
		}
		c.setPush(tenant, false)
		select {
		case kick <- struct{}{}:
		default:
		}
		if err != nil {
			c.sourceFailed(tenant, src, fmt.Errorf("watch: %w", err))
		}
		if time.Since(start) > watchStableReset {
			backoff = backoffMin
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, backoffMax)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// watchURLs returns the watch URL with the tenant parameter set and the
// fallback CRL URL on the same server.
func watchURLs(raw, tenant string) (watch, crl string, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", err
	}
	q := u.Query()
	if q.Get("tenant") == "" {
		q.Set("tenant", tenant)
		u.RawQuery = q.Encode()
	}
	base := strings.TrimSuffix(strings.TrimSuffix(u.Path, "/"), WatchPath)
	cu := url.URL{Scheme: u.Scheme, Host: u.Host, User: u.User, Path: base + CRLPath + tenant}
	return u.String(), cu.String(), nil
}

// stream reads one watch connection until it fails or ctx is done.
func (c *Checker) stream(ctx context.Context, tenant string, src int, u, crlURL string, connected *atomic.Bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		return fmt.Errorf("content type %q, want text/event-stream", ct)
	}
	// A silent connection (no heartbeat) is a dead one.
	idle := time.AfterFunc(c.idleTimeout, cancel)
	defer idle.Stop()
	var cond conditional // for CRLs announced by ETag
	return readSSE(resp.Body, c.maxBytes*4/3+maxSSELineOverhead, idle.Reset, c.idleTimeout, func(event string, data []byte) error {
		if event != "" && event != "revocation" {
			return nil // unknown event types are for newer replicas
		}
		if err := c.handleEvent(ctx, tenant, src, data, crlURL, &cond); err != nil {
			return err
		}
		if !connected.Load() {
			connected.Store(true)
			c.setPush(tenant, true)
		}
		return nil
	})
}

// readSSE parses a server-sent event stream, calling onEvent for each event
// that has data, until r fails or onEvent returns an error. Lines and event
// data are bounded by max bytes. alive(idle) is called on every line so a
// caller can run an idle timer; it may be nil.
func readSSE(r io.Reader, max int64, alive func(time.Duration) bool, idle time.Duration, onEvent func(event string, data []byte) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var event string
	var data bytes.Buffer
	hasData := false
	for {
		line, err := readLine(br, max)
		if err != nil {
			return err
		}
		if alive != nil {
			alive(idle)
		}
		switch {
		case len(line) == 0:
			if hasData {
				if err := onEvent(event, data.Bytes()); err != nil {
					return err
				}
			}
			event, hasData = "", false
			data.Reset()
		case line[0] == ':':
			// comment: the heartbeat
		default:
			field, value, _ := bytes.Cut(line, []byte(":"))
			value = bytes.TrimPrefix(value, []byte(" "))
			switch string(field) {
			case "event":
				event = string(value)
			case "data":
				if int64(data.Len()+len(value)+1) > max {
					return fmt.Errorf("event larger than %d bytes", max)
				}
				if hasData {
					data.WriteByte('\n')
				}
				data.Write(value)
				hasData = true
			}
		}
	}
}

// handleEvent applies one watch event. A CRL that fails verification is
// refused (and logged by apply) and so is the agent list that came with it:
// both come from the same server.
func (c *Checker) handleEvent(ctx context.Context, tenant string, src int, data []byte, crlURL string, cond *conditional) error {
	var ev WatchEvent
	if err := json.Unmarshal(data, &ev); err != nil {
		return fmt.Errorf("decode event: %w", err)
	}
	if ev.Tenant != tenant {
		return fmt.Errorf("event for tenant %q on the stream of %q", ev.Tenant, tenant)
	}
	if err := c.checkPush(tenant, &ev); err != nil {
		return err
	}
	if len(ev.CRL) == 0 && ev.CRLETag != "" {
		// Too large to inline: fetch it unless it is the one applied last.
		if ev.CRLETag != cond.etag {
			err := c.fetchCRL(ctx, tenant, src, crlURL, cond)
			var refused refusedError
			if errors.As(err, &refused) {
				c.refusedAgents(tenant, ev)
				return nil
			}
			if err != nil {
				return err
			}
		}
		c.setAgents(tenant, ev.RevokedAgents)
		c.pushApplied(tenant, data, &ev)
		return nil
	}
	if len(ev.CRL) == 0 {
		return errors.New("event without crl")
	}
	if err := c.apply(tenant, src, ev.CRL); err != nil {
		// Older, forged or malformed: the agent list came with it and is
		// no more trustworthy. Applying it would let whoever controls the
		// channel clear agent revocations by replaying an old CRL.
		c.refusedAgents(tenant, ev)
		return nil
	}
	c.setAgents(tenant, ev.RevokedAgents)
	c.pushApplied(tenant, data, &ev)
	return nil
}

// refusedAgents logs that the agent list of an event whose CRL was refused
// is not applied.
func (c *Checker) refusedAgents(tenant string, ev WatchEvent) {
	c.log.Warn("revocation: revoked_agents of a watch event whose crl was refused not applied; keeping the previous list",
		"tenant", tenant, "generation", ev.Generation, "agents", len(ev.RevokedAgents))
}

// readLine reads one line without its terminator (\n or \r\n), at most max
// bytes.
func readLine(br *bufio.Reader, max int64) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == nil {
		return bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r")), nil
	}
	if !errors.Is(err, bufio.ErrBufferFull) {
		return nil, err
	}
	buf := append([]byte(nil), line...)
	for {
		line, err = br.ReadSlice('\n')
		if int64(len(buf)+len(line)) > max {
			return nil, fmt.Errorf("line longer than %d bytes", max)
		}
		buf = append(buf, line...)
		if err == nil {
			return bytes.TrimSuffix(bytes.TrimSuffix(buf, []byte("\n")), []byte("\r")), nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}
