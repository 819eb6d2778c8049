package testenv

import (
	"io/fs"
	"os"
	"path/filepath"
)

// CopyTree copies the files under src to dst with their modes, as an operator
// copies a control-plane instance's keys to another (keys stay 0600, which
// os.CopyFS would not keep).
func CopyTree(t T, src, dst string) {
	helper(t)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), info.Mode().Perm())
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}
