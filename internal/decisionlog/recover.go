package decisionlog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/agentauthz/agentauthz/internal/durable"
)

// Side files. Open never cuts a byte other than padding off the log
// without keeping it (see docs/decision-log.md).

// keepTornBytes writes b durably (file and directory fsynced) to the side
// file .torn-<segment>-<offset> in dir and returns its path. A file of that
// name left by an earlier attempt with the same bytes (a crash between
// keeping and cutting) is reused; anything else under that name is left
// alone, and a numbered name (.1, .2, …) is used: a side file is never
// overwritten. The caller holds the log's lock, so nobody else creates
// these names meanwhile.
func keepTornBytes(open openFunc, dir, seg string, off int64, b []byte) (string, error) {
	base := fmt.Sprintf("%s%s-%d", tornFilePrefix, seg, off)
	for i := 0; i < 100; i++ {
		name := base
		if i > 0 {
			name = fmt.Sprintf("%s.%d", base, i)
		}
		path := filepath.Join(dir, name)
		fi, err := os.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) {
			if err := writeSideFile(open, path, b); err != nil {
				return "", fmt.Errorf("side file %s: %w", path, err)
			}
			return path, nil
		}
		if err != nil {
			return "", err
		}
		if fi.Mode().IsRegular() && fi.Size() == int64(len(b)) {
			same, err := fileHolds(path, b)
			if err != nil {
				return "", err
			}
			if same {
				// Complete (it got its name after its fsync); the
				// directory entry may not have been synced.
				return path, durable.SyncDir(dir)
			}
		}
	}
	return "", fmt.Errorf("too many side files named %s*", base)
}

// writeSideFile writes b to a temporary file (through open, 0600), fsyncs
// it, renames it to path and fsyncs the directory: the file has its name
// only once it is complete and durable.
func writeSideFile(open openFunc, path string, b []byte) (err error) {
	dir := filepath.Dir(path)
	// Not matched by .torn-*: a leftover is not taken for a side file.
	tmp := filepath.Join(dir, "."+filepath.Base(path)+".tmp")
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := open(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if _, err = f.WriteAt(b, 0); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return durable.SyncDir(dir)
}

// fileHolds reports whether the file at path holds exactly b. It reads at
// most len(b)+1 bytes, however large the file is.
func fileHolds(path string, b []byte) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	got, err := io.ReadAll(io.LimitReader(f, int64(len(b))+1))
	if err != nil {
		return false, err
	}
	return bytes.Equal(got, b), nil
}

func truncateDurable(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("seal last segment: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("seal last segment: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("seal last segment: %w", err)
	}
	return nil
}
