//go:build linux

package loadtest

import (
	"errors"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// precisePacing pins the calling goroutine to its OS thread and asks the
// kernel for 1 µs timer slack on it, so that sleepUntil wakes on time.
// Call it once from the pacer goroutine.
func precisePacing() {
	runtime.LockOSThread()
	// Best effort: without it nanosleep still wakes within the default 50 µs slack.
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1000, 0, 0, 0)
}

// sleepUntil blocks the thread in nanosleep(2) until t. The runtime's own
// timers wake an idle process through epoll_wait, whose timeout has
// millisecond resolution: time.Sleep(186µs) took about 1.07 ms on the
// reference machine, so a pacer built on it released requests in bursts
// once a millisecond and each burst counted up to a millisecond of its own
// lateness as server latency.
func sleepUntil(t time.Time) {
	d := time.Until(t)
	if d <= 0 {
		return
	}
	ts := unix.NsecToTimespec(int64(d))
	// Interrupted sleeps resume with the time that remains (in ts).
	for errors.Is(unix.Nanosleep(&ts, &ts), unix.EINTR) {
		continue
	}
}
