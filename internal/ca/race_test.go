package ca

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Tests that race other processes over one data directory re-run the test
// binary. The child runs one Test function, which calls raceChildWait (it
// prints raceReady and waits for a line on stdin, so that every racer starts
// together), does its work and prints raceResult followed by its outcome.
const (
	raceReady  = "race-child: ready"
	raceResult = "race-child: result "
)

// raceChildWait is the child's side: ready, then wait to be released.
func raceChildWait(t *testing.T) {
	t.Helper()
	fmt.Println(raceReady)
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		t.Fatalf("child: no start line: %v", err)
	}
}

// raceChild is a started child waiting to be released.
type raceChild struct {
	stdin io.WriteCloser
	// done delivers the child's outcome (the text after raceResult) once
	// it exits, or an error saying how it failed.
	done chan raceOutcome
}

type raceOutcome struct {
	text string
	err  error
}

// startRaceChild starts the test binary running only test, with env added,
// and returns once the child is ready.
func startRaceChild(t *testing.T, test string, env ...string) *raceChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	ready := false
	for !ready && sc.Scan() {
		ready = sc.Text() == raceReady
	}
	if !ready {
		cmd.Wait()
		t.Fatalf("%s child did not start: %s", test, stderr.String())
	}
	c := &raceChild{stdin: stdin, done: make(chan raceOutcome, 1)}
	go func() {
		var lines []string
		out := raceOutcome{err: fmt.Errorf("no result")}
		for sc.Scan() {
			if r, ok := strings.CutPrefix(sc.Text(), raceResult); ok {
				out = raceOutcome{text: r}
				continue
			}
			lines = append(lines, sc.Text())
		}
		if err := cmd.Wait(); err != nil {
			out.err = fmt.Errorf("%v\nstdout: %s\nstderr: %s", err, strings.Join(lines, "\n"), stderr.String())
		}
		c.done <- out
	}()
	return c
}

// release lets the child go.
func (c *raceChild) release(t *testing.T) {
	t.Helper()
	if _, err := io.WriteString(c.stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	c.stdin.Close()
}
