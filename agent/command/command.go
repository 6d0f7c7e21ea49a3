// Package command runs check and reload commands the way an init system
// would want them run: through /bin/sh, in a process group of their own so
// that a timeout kills the command and everything it started, with bounded
// captured output.
package command

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"time"
)

// maxOutput bounds the captured output kept for logs and errors.
const maxOutput = 4096

// Result is what a finished command left behind.
type Result struct {
	Output   string // combined stdout and stderr, truncated to a few KiB
	Duration time.Duration
	ExitCode int // -1 when killed or never started
}

// TimeoutError says the command ran out of time and was killed.
type TimeoutError struct {
	Command string
	Timeout time.Duration
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("command %q killed after its %s timeout", e.Command, e.Timeout)
}

// Run runs line with /bin/sh -c. It returns an error when the command exits
// non-zero, times out, or ctx is done; in the last two cases the whole process
// group is killed and Run waits for it to go. A non-zero exit error carries
// the command's output so the log says why.
func Run(ctx context.Context, line string, timeout time.Duration, env []string) (Result, error) {
	start := time.Now()
	cmd := exec.Command("/bin/sh", "-c", line)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if env != nil {
		cmd.Env = env
	}
	out := &limitedBuffer{limit: maxOutput}
	cmd.Stdout, cmd.Stderr = out, out
	// A grandchild that keeps the output pipe open must not hold Wait up
	// after the group is killed.
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return Result{ExitCode: -1}, fmt.Errorf("start %q: %w", line, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	var timer <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		timer = t.C
	}
	var err error
	select {
	case err = <-done:
	case <-timer:
		killGroup(cmd)
		<-done
		err = &TimeoutError{Command: line, Timeout: timeout}
	case <-ctx.Done():
		killGroup(cmd)
		<-done
		err = fmt.Errorf("command %q interrupted: %w", line, ctx.Err())
	}
	res := Result{Output: out.String(), Duration: time.Since(start), ExitCode: -1}
	if cmd.ProcessState != nil {
		res.ExitCode = cmd.ProcessState.ExitCode()
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		err = fmt.Errorf("command %q exited with status %d: %s", line, res.ExitCode, bytes.TrimSpace([]byte(res.Output)))
	}
	return res, err
}

func killGroup(cmd *exec.Cmd) {
	// The negative pid addresses the process group Setpgid created.
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
}

// limitedBuffer keeps the first limit bytes written and counts the rest.
type limitedBuffer struct {
	buf     bytes.Buffer
	limit   int
	dropped int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	room := b.limit - b.buf.Len()
	if room > len(p) {
		room = len(p)
	}
	if room > 0 {
		b.buf.Write(p[:room])
	}
	b.dropped += len(p) - max(room, 0)
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	if b.dropped > 0 {
		return fmt.Sprintf("%s... (%d more bytes)", b.buf.String(), b.dropped)
	}
	return b.buf.String()
}
