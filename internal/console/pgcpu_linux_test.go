//go:build linux

package console

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// postgresCPU is the CPU time (user and system) the PostgreSQL cluster
// that listens on port has used: its postmaster and the processes it
// started (the backends of the benchmark's open connections), from /proc.
// 0 when it is not found.
func postgresCPU(port int) time.Duration {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	want := []byte("port=" + strconv.Itoa(port) + "\x00")
	master := ""
	for _, p := range procs {
		if cmd, err := os.ReadFile(p + "/cmdline"); err == nil && bytes.Contains(cmd, want) && bytes.Contains(cmd, []byte("postgres")) {
			master = filepath.Base(p)
			break
		}
	}
	if master == "" {
		return 0
	}
	var ticks int64
	for _, p := range procs {
		b, err := os.ReadFile(p + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid … utime stime: fields after the comm's ")".
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 || (filepath.Base(p) != master && f[1] != master) {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + s
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}
