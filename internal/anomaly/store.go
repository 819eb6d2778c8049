package anomaly

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// ID names an alert: a digest of its rule, agent, key and time, so the same
// alert from a second replay has the same id.
func (a *Alert) ID() string {
	h := sha256.Sum256([]byte(a.Rule + "\x00" + a.Agent + "\x00" + a.Key + "\x00" + a.Time.UTC().Format(time.RFC3339Nano)))
	return hex.EncodeToString(h[:6])
}

// Ack is a responder's acknowledgement of an alert.
type Ack struct {
	ID   string    `json:"id"`
	By   string    `json:"by"`
	Note string    `json:"note"`
	At   time.Time `json:"at"`
}

// StoredAlert is an alert with its id and acknowledgement.
type StoredAlert struct {
	ID    string `json:"id"`
	Alert Alert  `json:"alert"`
	Ack   *Ack   `json:"ack,omitempty"`
}

// Store is an append-only JSON-lines file of alerts and acknowledgements.
// Each append is fsynced before it returns.
type Store struct{ path string }

// OpenStore uses path (created on the first append).
func OpenStore(path string) *Store { return &Store{path: path} }

type storeLine struct {
	Alert *StoredAlert `json:"alert,omitempty"`
	Ack   *Ack         `json:"ack,omitempty"`
}

// maxStoreLine bounds one line of the alert file.
const maxStoreLine = 1 << 20

// Add appends alerts.
func (s *Store) Add(as []Alert) error {
	if len(as) == 0 {
		return nil
	}
	var b strings.Builder
	for i := range as {
		line, err := json.Marshal(storeLine{Alert: &StoredAlert{ID: as[i].ID(), Alert: as[i]}})
		if err != nil {
			return err
		}
		b.Write(line)
		b.WriteByte('\n')
	}
	return s.append(b.String())
}

// Acknowledge records that id was looked at. It fails for an unknown id or
// one already acknowledged.
func (s *Store) Acknowledge(id, by, note string, at time.Time) (*StoredAlert, error) {
	if by == "" {
		return nil, errors.New("an acknowledgement names who made it")
	}
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	for _, a := range all {
		if a.ID != id {
			continue
		}
		if a.Ack != nil {
			return nil, fmt.Errorf("alert %s was acknowledged by %s at %s", id, a.Ack.By, a.Ack.At.Format(time.RFC3339))
		}
		a.Ack = &Ack{ID: id, By: by, Note: note, At: at.UTC()}
		line, err := json.Marshal(storeLine{Ack: a.Ack})
		if err != nil {
			return nil, err
		}
		return &a, s.append(string(line) + "\n")
	}
	return nil, fmt.Errorf("no alert %q in %s", id, s.path)
}

func (s *Store) append(lines string) error {
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(lines); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// List returns every alert, oldest first, with its acknowledgement. A line
// that does not decode is an error naming it: the file is evidence.
func (s *Store) List() ([]StoredAlert, error) {
	f, err := os.Open(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []StoredAlert
	idx := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxStoreLine)
	for n := 1; sc.Scan(); n++ {
		var l storeLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil || (l.Alert == nil) == (l.Ack == nil) {
			return nil, fmt.Errorf("%s line %d: not an alert or acknowledgement", s.path, n)
		}
		switch {
		case l.Alert != nil:
			if _, dup := idx[l.Alert.ID]; dup {
				continue // a second replay over the same records
			}
			idx[l.Alert.ID] = len(out)
			out = append(out, *l.Alert)
		default:
			i, ok := idx[l.Ack.ID]
			if !ok {
				return nil, fmt.Errorf("%s line %d: acknowledges unknown alert %s", s.path, n, l.Ack.ID)
			}
			out[i].Ack = l.Ack
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", s.path, err)
	}
	return out, nil
}
