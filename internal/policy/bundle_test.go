package policy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
)

// testKey is an ECDSA P-256 signing key generated per test (never checked in).
type testKey struct {
	privPEM string
	pubFile string
}

func newTestKey(t *testing.T) testKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubFile := filepath.Join(t.TempDir(), "bundle.pub.pem")
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return testKey{privPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), pubFile: pubFile}
}

// buildBundle writes a .tar.gz bundle with one policy module, as `opa build`
// would, signed with key unless key is nil.
func buildBundle(t *testing.T, revision, policy string, key *testKey) []byte {
	t.Helper()
	parsed, err := ast.ParseModule("/authz.rego", policy)
	if err != nil {
		t.Fatal(err)
	}
	b := bundle.Bundle{
		Manifest: bundle.Manifest{Revision: revision, Roots: &[]string{""}},
		Modules:  []bundle.ModuleFile{{URL: "/authz.rego", Path: "/authz.rego", Raw: []byte(policy), Parsed: parsed}},
		Data:     map[string]any{"agentauthz": map[string]any{"routes": []any{}}},
	}
	if key != nil {
		if err := b.GenerateSignature(bundle.NewSigningConfig(key.privPEM, "ES256", ""), "default", false); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := bundle.NewWriter(&buf).Write(b); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// retar rewrites the tarball, passing every file through edit.
func retar(t *testing.T, tgz []byte, edit func(name string, body []byte) []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	tw := tar.NewWriter(zw)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		body = edit(h.Name, body)
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

const bundlePolicyV1 = "package agentauthz.authz\n\ndecision := {\"allowed\": false, \"reason\": \"v1\"}\n"
const bundlePolicyV2 = "package agentauthz.authz\n\ndecision := {\"allowed\": true, \"reason\": \"v2\"}\n"

func writeBundleFile(t *testing.T, path string, tgz []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, tgz, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func reasonOf(t *testing.T, e *Engine) string {
	t.Helper()
	r, err := e.Eval(context.Background(), sampleRequest("GET", "/", "", ""), testAgent())
	if err != nil {
		t.Fatal(err)
	}
	return r.Reason
}

func TestBundleFileSignedAndSwapped(t *testing.T) {
	key := newTestKey(t)
	path := filepath.Join(t.TempDir(), "agentauthz.tar.gz")
	writeBundleFile(t, path, buildBundle(t, "rev-1", bundlePolicyV1, &key))
	e := newTestEngine(t, Config{Bundle: path, BundleVerificationKey: key.pubFile})
	if e.Revision() != "rev-1" || reasonOf(t, e) != "v1" {
		t.Fatalf("revision %q", e.Revision())
	}
	// Unchanged file: no reload counted.
	if err := e.Reload(); err != nil {
		t.Fatal(err)
	}
	// A correctly signed new revision is picked up without a restart.
	writeBundleFile(t, path, buildBundle(t, "rev-2", bundlePolicyV2, &key))
	if err := e.Reload(); err != nil {
		t.Fatal(err)
	}
	if e.Revision() != "rev-2" || reasonOf(t, e) != "v2" {
		t.Fatalf("after swap: revision %q", e.Revision())
	}
}

func TestBundleRefused(t *testing.T) {
	key, other := newTestKey(t), newTestKey(t)
	good := buildBundle(t, "rev-1", bundlePolicyV1, &key)
	tampered := retar(t, buildBundle(t, "rev-2", bundlePolicyV2, &key), func(name string, body []byte) []byte {
		if strings.HasSuffix(name, "authz.rego") {
			return bytes.Replace(body, []byte("true"), []byte("false"), 1)
		}
		return body
	})
	tamperedManifest := retar(t, buildBundle(t, "rev-2", bundlePolicyV2, &key), func(name string, body []byte) []byte {
		if strings.HasSuffix(name, ".manifest") {
			return bytes.Replace(body, []byte("rev-2"), []byte("rev-3"), 1)
		}
		return body
	})
	for name, bad := range map[string][]byte{
		"unsigned":          buildBundle(t, "rev-2", bundlePolicyV2, nil),
		"wrong key":         buildBundle(t, "rev-2", bundlePolicyV2, &other),
		"tampered policy":   tampered,
		"tampered manifest": tamperedManifest,
		"not a bundle":      []byte("hello"),
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "b.tar.gz")
			// Refused at start…
			writeBundleFile(t, path, bad)
			if _, err := New(Config{Bundle: path, BundleVerificationKey: key.pubFile}); err == nil {
				t.Fatal("New accepted the bundle")
			}
			// …and as an update: the previous revision keeps serving.
			writeBundleFile(t, path, good)
			e := newTestEngine(t, Config{Bundle: path, BundleVerificationKey: key.pubFile})
			writeBundleFile(t, path, bad)
			if err := e.Reload(); !errors.Is(err, ErrPolicyRejected) {
				t.Fatalf("Reload = %v, want ErrPolicyRejected", err)
			}
			if e.Revision() != "rev-1" || reasonOf(t, e) != "v1" {
				t.Fatalf("previous bundle not serving: %q", e.Revision())
			}
		})
	}
}

func TestBundleWithoutKeyAcceptsUnsigned(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.tar.gz")
	writeBundleFile(t, path, buildBundle(t, "", bundlePolicyV1, nil))
	e := newTestEngine(t, Config{Bundle: path})
	if !strings.HasPrefix(e.Revision(), "bundle:") {
		t.Fatalf("revision %q, want content hash for a bundle without revision", e.Revision())
	}
}

// bundleServer serves a bundle with an ETag and answers If-None-Match.
type bundleServer struct {
	mu          sync.Mutex
	body        []byte
	notModified atomic.Int64
	fetches     atomic.Int64
}

func (s *bundleServer) set(b []byte) { s.mu.Lock(); s.body = b; s.mu.Unlock() }

func (s *bundleServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	body := s.body
	s.mu.Unlock()
	sum := sha256.Sum256(body)
	etag := `"` + hex.EncodeToString(sum[:8]) + `"`
	if r.Header.Get("If-None-Match") == etag {
		s.notModified.Add(1)
		w.WriteHeader(http.StatusNotModified)
		return
	}
	s.fetches.Add(1)
	w.Header().Set("ETag", etag)
	_, _ = w.Write(body)
}

func TestBundleURLPolledWithETag(t *testing.T) {
	key := newTestKey(t)
	srv := &bundleServer{}
	srv.set(buildBundle(t, "rev-1", bundlePolicyV1, &key))
	ts := httptest.NewServer(srv)
	defer ts.Close()
	e := newTestEngine(t, Config{Bundle: ts.URL + "/bundles/agentauthz.tar.gz", BundleVerificationKey: key.pubFile,
		BundlePollInterval: 10 * time.Millisecond, HTTPClient: ts.Client()})
	if e.Revision() != "rev-1" {
		t.Fatalf("revision %q", e.Revision())
	}
	if err := e.Reload(); err != nil {
		t.Fatal(err)
	}
	if srv.notModified.Load() != 1 || srv.fetches.Load() != 1 {
		t.Fatalf("ETag not used: %d not-modified, %d fetches", srv.notModified.Load(), srv.fetches.Load())
	}

	// A wrongly signed update is refused while polling; then a good one lands.
	srv.set(buildBundle(t, "rev-x", bundlePolicyV2, ptr(newTestKey(t))))
	if err := e.Reload(); err == nil || e.Revision() != "rev-1" {
		t.Fatalf("Reload = %v, revision %q", err, e.Revision())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	srv.set(buildBundle(t, "rev-2", bundlePolicyV2, &key))
	deadline := time.Now().Add(10 * time.Second)
	for e.Revision() != "rev-2" {
		if time.Now().After(deadline) {
			t.Fatal("new revision not picked up by polling")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if reasonOf(t, e) != "v2" {
		t.Fatal("new policy not serving")
	}
}

func TestBundleURLUnavailableAtStart(t *testing.T) {
	key := newTestKey(t)
	srv := &bundleServer{}
	ts := httptest.NewServer(srv) // serves an empty body: not a bundle
	defer ts.Close()
	e := newTestEngine(t, Config{Bundle: ts.URL, BundleVerificationKey: key.pubFile, HTTPClient: ts.Client()})
	if e.Ready() {
		t.Fatal("ready without a bundle")
	}
	if _, err := e.Eval(context.Background(), sampleRequest("GET", "/", "", ""), nil); !errors.Is(err, ErrNotReady) {
		t.Fatalf("Eval = %v, want ErrNotReady", err)
	}
	srv.set(buildBundle(t, "rev-1", bundlePolicyV1, &key))
	if err := e.Reload(); err != nil || !e.Ready() {
		t.Fatalf("Reload = %v, ready %v", err, e.Ready())
	}
}

func TestVerificationKeyFormats(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	writeFiles(t, dir, map[string]string{"secret": "s3cret\n", "empty": "", "priv.pem": newTestKey(t).privPEM})
	kc, err := loadVerificationKey(secret)
	if err != nil || kc.Algorithm != "HS256" || kc.Key != "s3cret" {
		t.Fatalf("HMAC secret: %+v, %v", kc, err)
	}
	for _, bad := range []string{"empty", "priv.pem", "missing"} {
		if _, err := loadVerificationKey(filepath.Join(dir, bad)); err == nil {
			t.Errorf("%s accepted as a verification key", bad)
		}
	}
}

func ptr[T any](v T) *T { return &v }
