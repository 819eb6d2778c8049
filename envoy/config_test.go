package envoy

import (
	"fmt"
	"strings"
	"testing"

	"github.com/agentauthz/agentauthz/internal/config"
)

// TestConfigMapIsAValidServeConfig decodes the ConfigMap's config.yaml with
// the server's own strict decoder and validation, so a renamed or removed
// config key breaks this test rather than a deployment.
func TestConfigMapIsAValidServeConfig(t *testing.T) {
	var raw string
	n := 0
	for _, m := range loadManifests(t, manifestDirs...) {
		if m.kind() == "ConfigMap" && m.name() == "agentauthz-config" {
			n++
			raw, _ = dig(m.doc, "data", "config.yaml").(string)
			if err := validServeConfig(raw); err != nil {
				t.Errorf("%s: %v", m.file, err)
			}
		}
	}
	if n != 2 || raw == "" {
		t.Fatalf("want config.yaml in two ConfigMaps agentauthz-config (kubernetes/, istio/), found %d", n)
	}

	if _, err := config.Decode(strings.NewReader(raw + "grpc_addr: \":9191\"\n")); err == nil {
		t.Error("an unknown key was accepted; the strictness this test relies on is gone")
	}
}

// validServeConfig decodes strictly, applies defaults and validates, as
// `agentauthz serve --config` does before starting.
func validServeConfig(raw string) error {
	c, err := config.Decode(strings.NewReader(raw))
	if err != nil {
		return fmt.Errorf("strict decode: %w", err)
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return fmt.Errorf("validate: %w", err)
	}
	return nil
}
