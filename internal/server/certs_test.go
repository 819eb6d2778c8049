package server

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/durable"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// servedSerial opens a new TLS connection and returns the serial number of
// the certificate the server presents.
func servedSerial(t *testing.T, addr string, pool *x509.CertPool) string {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{RootCAs: pool, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func TestServerCertificateReloadsWhenFilesRotate(t *testing.T) {
	ca := testca.New(t)
	dir := t.TempDir()
	issue := func() *testca.Leaf {
		return ca.Issue("agentauthz", testca.EKU(x509.ExtKeyUsageServerAuth), testca.Template(func(c *x509.Certificate) {
			c.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		}))
	}
	certFile, keyFile := filepath.Join(dir, "srv.pem"), filepath.Join(dir, "srv.key")
	put := func(l *testca.Leaf) {
		// Key first, then certificate, each replaced by rename as
		// cert-manager and kubelet do.
		if err := durable.WriteFile(keyFile, l.KeyPEM(), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := durable.WriteFile(certFile, l.PEM(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	first, second := issue(), issue()
	put(first)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)

	cfg := config.Config{DataDir: dir, GRPC: config.GRPC{TLS: config.TLS{CertFile: certFile, KeyFile: keyFile}}}
	r := start(t, cfg, Components{Authorization: &stubAuthz{}})
	if got, want := servedSerial(t, r.grpcAddr, pool), first.Cert.SerialNumber.String(); got != want {
		t.Fatalf("served serial %s, want the first certificate's %s", got, want)
	}

	// A broken rotation (a key that does not match) keeps the last good pair.
	other := issue()
	if err := durable.WriteFile(keyFile, other.KeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // past the debounce: the reload has been tried
	if got, want := servedSerial(t, r.grpcAddr, pool), first.Cert.SerialNumber.String(); got != want {
		t.Fatalf("after a mismatched key the server serves %s, want the last good %s", got, want)
	}

	put(second)
	want := second.Cert.SerialNumber.String()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := servedSerial(t, r.grpcAddr, pool)
		if got == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new connections still get serial %s, want the rotated certificate's %s", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestServerCertificateMustLoadAtStart(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "srv.pem"), filepath.Join(dir, "srv.key")
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := newServerCert(config.TLS{CertFile: certFile, KeyFile: keyFile}, nil); err == nil {
		t.Fatal("a certificate that does not parse was accepted at start")
	}
}
