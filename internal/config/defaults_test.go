package config_test

import (
	"testing"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/extproc"
	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/policy"
	"github.com/agentauthz/agentauthz/internal/revocation"
)

// The packages that own a setting keep a default for callers that build
// them directly (tests, the CLI); config keeps the documented one without
// importing them (it stays free of OPA). This test is what keeps the two
// equal: a default changed in one place and not the other fails here.
func TestDefaultsMatchTheOwningPackages(t *testing.T) {
	pairs := []struct {
		name         string
		config, owns any
	}{
		{"policy.path", config.DefaultPolicyPath, policy.DefaultPath},
		{"policy.eval_timeout", config.DefaultEvalTimeout, policy.DefaultEvalTimeout},
		{"policy.bundle_poll_interval", config.DefaultBundlePollInterval, policy.DefaultBundlePollInterval},
		{"policy.decision_cache.time_granularity", config.DefaultTimeGranularity, policy.DefaultTimeGranularity},
		{"identity cache size", config.DefaultCacheSize, identity.DefaultCacheSize},
		{"revocation poll interval", config.DefaultCRLPollInterval, revocation.DefaultPollInterval},
		{"revocation grace", config.DefaultCRLGrace, revocation.DefaultGrace},
		{"decision_log.async_buffer", config.DefaultAsyncBuffer, decisionlog.DefaultAsyncBuffer},
		{"decision_log.segment_max_bytes", config.DefaultSegmentMaxBytes, decisionlog.DefaultSegmentMaxBytes},
		{"decision_log.segment_max_age", config.DefaultSegmentMaxAge, decisionlog.DefaultSegmentMaxAge},
		{"response_signing.max_body_bytes", config.DefaultResponseMaxBody, extproc.DefaultMaxBodyBytes},
		{"response_signing.max_header_bytes", config.DefaultResponseMaxHeader, extproc.DefaultMaxHeaderBytes},
	}
	for _, p := range pairs {
		if p.config != p.owns {
			t.Errorf("%s: config default %v, owning package's default %v", p.name, p.config, p.owns)
		}
	}
}
