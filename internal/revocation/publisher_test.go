package revocation

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/testca"
)

func TestPublisherCRLEndpoint(t *testing.T) {
	ca := testca.New(t)
	store := newFakeStore(ca)
	srv, _, _ := startPublisher(t, store)

	resp, err := http.Get(srv.URL + CRLPath + td)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/pkix-crl" {
		t.Fatalf("status %d content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	want, _ := store.CurrentCRL(td)
	if !bytes.Equal(body, want) {
		t.Error("served CRL differs from the store's")
	}
	etag, lm := resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
	if etag == "" || lm == "" {
		t.Fatalf("etag %q last-modified %q", etag, lm)
	}

	for _, h := range []map[string]string{{"If-None-Match": etag}, {"If-Modified-Since": lm}} {
		req, _ := http.NewRequest("GET", srv.URL+CRLPath+td, nil)
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotModified {
			t.Errorf("%v: status %d, want 304", h, resp.StatusCode)
		}
	}

	for path, code := range map[string]int{
		CRLPath + "unknown.test":   404,
		CRLPath + "Bad_Tenant":     400,
		WatchPath + "?tenant=":     400,
		WatchPath + "?tenant=nope": 404,
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != code {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, code)
		}
	}
}

// TestPublisherWatchWireFormat pins the documented wire format.
func TestPublisherWatchWireFormat(t *testing.T) {
	ca := testca.New(t)
	store := newFakeStore(ca)
	srv, _, _ := startPublisher(t, store)
	resp, err := http.Get(srv.URL + WatchPath + "?tenant=" + td)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	br := bufio.NewReader(resp.Body)
	next := func() (id string, ev WatchEvent) {
		t.Helper()
		var event, data string
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			line = strings.TrimSuffix(line, "\n")
			switch {
			case line == "" && data != "":
				if event != "revocation" {
					t.Fatalf("event type %q", event)
				}
				if err := json.Unmarshal([]byte(data), &ev); err != nil {
					t.Fatal(err)
				}
				return id, ev
			case strings.HasPrefix(line, "event: "):
				event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "id: "):
				id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "data: "):
				data = strings.TrimPrefix(line, "data: ")
			}
		}
	}
	id, ev := next()
	crl, _ := store.CurrentCRL(td)
	if id != "1" || ev.Generation != 1 || ev.Tenant != td || !bytes.Equal(ev.CRL, crl) || ev.RevokedAgents == nil || len(ev.RevokedAgents) != 0 {
		t.Fatalf("first event id %q %+v", id, ev)
	}
	store.revokeAgent("bot-a")
	id, ev = next()
	if id != "2" || ev.Generation != 2 || len(ev.RevokedAgents) != 1 || ev.RevokedAgents[0] != "bot-a" {
		t.Fatalf("second event id %q %+v", id, ev)
	}
}

// TestPublisherShutdownEndsStreams: Run returning must end every watch
// stream, or http.Server.Shutdown would wait for them.
func TestPublisherShutdownEndsStreams(t *testing.T) {
	ca := testca.New(t)
	pub, err := NewPublisher(PublisherConfig{Store: newFakeStore(ca), GenerationPoll: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := contextWithTimeout(t)
	done := make(chan struct{})
	go func() { pub.Run(ctx); close(done) }()
	srv := newHTTPServer(t, pub.Handler())
	resp, err := http.Get(srv.URL + WatchPath + "?tenant=" + td)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	cancel()
	<-done
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatalf("stream did not end cleanly: %v", err)
	}
}
