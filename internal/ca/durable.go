package ca

import (
	"errors"

	"github.com/agentauthz/agentauthz/internal/durable"
)

// readBounded reads a small input file, refusing anything over limit as an
// input error the CLI reports against the file.
func readBounded(path string, limit int64) ([]byte, error) {
	b, err := durable.ReadFile(path, limit)
	if errors.Is(err, durable.ErrTooLarge) {
		return nil, fieldf("file", "%s is larger than %d bytes", path, limit)
	}
	return b, err
}
