package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/revocation"
)

// scrape returns the body of GET url.
func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v\n%s", url, resp.StatusCode, err, b)
	}
	return string(b)
}

// servingHTTPAddr finds the HTTP address in serve's JSON "serving" log line.
func servingHTTPAddr(log string) string {
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		var line struct {
			Message string `json:"@message"`
			HTTP    string `json:"http"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Message == "serving" && line.HTTP != "" {
			return line.HTTP
		}
	}
	return ""
}

// TestDevPublisherMetrics: serve --dev's /metrics carries the metrics of its
// in-process revocation publisher, as `ca serve`'s /metrics does, beside the
// replica-side revocation metrics; the publisher's watchers gauge counts the
// server's own watch stream.
func TestDevPublisherMetrics(t *testing.T) {
	s := startDevServe(t)
	defer s.stop(t)
	var addr string
	s.waitFor(t, "serving line", 30*time.Second, func(log string) bool {
		addr = servingHTTPAddr(log)
		return addr != ""
	})

	// The replica's revocation checker connects to the publisher's watch
	// stream once it starts: wait for the gauge to say so.
	watchers := regexp.MustCompile(`(?m)^agentauthz_revocation_publisher_watchers ([0-9.e+]+)$`)
	var body string
	deadline := time.Now().Add(30 * time.Second)
	for {
		body = scrape(t, "http://"+addr+"/metrics")
		if m := watchers.FindStringSubmatch(body); m != nil && m[1] != "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no watch stream counted by agentauthz_revocation_publisher_watchers within 30s:\n%s\nserve:\n%s", body, s.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, name := range []string{
		"agentauthz_revocation_publisher_events_total", // the publisher's other metric
		"agentauthz_revocation_push_connected",         // the replica side, unchanged
	} {
		if !regexp.MustCompile(`(?m)^` + name + `\b`).MatchString(body) {
			t.Errorf("/metrics lacks %s:\n%s", name, body)
		}
	}
}

// TestCAServeMetrics: `ca serve` still serves its own registry, with the
// publisher metrics, on its /metrics.
func TestCAServeMetrics(t *testing.T) {
	dir := t.TempDir()
	a, err := ca.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Init(ca.InitRequest{TrustDomain: "acme.test", Operator: "test"}); err != nil {
		t.Fatal(err)
	}
	a.Close()
	reg := prometheus.NewRegistry()
	rs, err := newRevocationServer(dir, "127.0.0.1:0", hclog.NewNullLogger(), reg, reg,
		revocation.DefaultGenerationPoll, revocation.DefaultHeartbeat, controlOptions{plain: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- rs.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}()
	body := scrape(t, rs.URL()+"/metrics")
	if !strings.Contains(body, "agentauthz_revocation_publisher_watchers ") {
		t.Errorf("ca serve /metrics lacks the publisher metrics:\n%s", body)
	}
}
