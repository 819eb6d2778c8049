package console

import (
	"archive/zip"
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/agentauthz/agentauthz/internal/control"
)

// unzipPack reads the console's evidence download: the pack, NAME.sig and
// NAME.pub.pem, and nothing else.
func unzipPack(t *testing.T, b []byte) (pack, sig, pub []byte) {
	t.Helper()
	z, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	var name string
	for _, f := range z.File {
		r, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		files[f.Name], err = io.ReadAll(r)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(f.Name, ".sig") && !strings.HasSuffix(f.Name, ".pub.pem") {
			name = f.Name
		}
	}
	if len(files) != 3 || files[name+".sig"] == nil || files[name+".pub.pem"] == nil {
		t.Fatalf("the zip holds %d files, want NAME, NAME.sig and NAME.pub.pem", len(files))
	}
	return files[name], files[name+".sig"], files[name+".pub.pem"]
}

// TestEvidencePackUnsigned: a console with no signing key refuses the
// download and says why, rather than sending a pack nobody can check.
func TestEvidencePackUnsigned(t *testing.T) {
	e := newEnv(t)
	e.noPackKey = true
	e.restart()
	c := e.signIn("audrey", control.RoleAuditor)
	tok := e.csrf(c, "/ui/compliance")
	code, body := e.post(c, "/ui/compliance/evidence", url.Values{"csrf": {tok}, "days": {"7"}, "format": {"json"}})
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "no key to sign evidence packs") {
		t.Errorf("unsigned pack: %d\n%s", code, body)
	}
}
