//go:build !linux

package loadtest

import "time"

func precisePacing() {}

func sleepUntil(t time.Time) { time.Sleep(time.Until(t)) }
