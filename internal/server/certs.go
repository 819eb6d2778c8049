package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/durable"
	"github.com/agentauthz/agentauthz/internal/filewatch"
)

const (
	// maxCertFileBytes bounds grpc.tls.cert_file and key_file.
	maxCertFileBytes = 1 << 20
	// certPollInterval re-reads the files even without a notification.
	certPollInterval = 10 * time.Second
)

// serverCert holds the gRPC listener's own certificate and replaces it when
// its files change, so a rotated certificate (cert-manager, a renewed Secret)
// is served on new connections without a restart. A pair that does not load
// (a half-written rotation, a key that does not match) keeps the last good
// one in force and is logged at error level.
type serverCert struct {
	certFile, keyFile string
	logger            hclog.Logger
	cur               atomic.Pointer[tls.Certificate]

	mu   sync.Mutex
	last [sha256.Size]byte // digest of the files last loaded
}

func newServerCert(t config.TLS, logger hclog.Logger) (*serverCert, error) {
	s := &serverCert{certFile: t.CertFile, keyFile: t.KeyFile, logger: logger}
	if _, err := s.reload(); err != nil {
		return nil, fmt.Errorf("grpc.tls: %w", err)
	}
	return s, nil
}

// GetCertificate is tls.Config's hook: every handshake takes the current pair.
func (s *serverCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cur.Load(), nil
}

// reload loads the pair if the files changed; it reports whether it did.
func (s *serverCert) reload() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	certPEM, err := durable.ReadFile(s.certFile, maxCertFileBytes)
	if err != nil {
		return false, err
	}
	keyPEM, err := durable.ReadFile(s.keyFile, maxCertFileBytes)
	if err != nil {
		return false, err
	}
	h := sha256.New()
	h.Write(certPEM)
	h.Write(keyPEM)
	var sum [sha256.Size]byte
	copy(sum[:], h.Sum(nil))
	if s.cur.Load() != nil && bytes.Equal(sum[:], s.last[:]) {
		return false, nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return false, err
	}
	s.cur.Store(&cert)
	s.last = sum
	return true, nil
}

// Run reloads on file changes until ctx ends.
func (s *serverCert) Run(ctx context.Context) error {
	filewatch.Run(ctx, []string{s.certFile, s.keyFile}, filewatch.Options{Interval: certPollInterval, Logger: s.logger},
		func() {
			switch changed, err := s.reload(); {
			case err != nil:
				s.logger.Error("grpc.tls: certificate not reloaded; the last one stays in force", "error", err)
			case changed:
				s.logger.Info("grpc.tls: certificate reloaded", "cert_file", s.certFile)
			}
		})
	return nil
}
