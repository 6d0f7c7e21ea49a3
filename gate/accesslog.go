package gate

import (
	"bufio"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"
)

// accessLogFlush is how long an access log line may wait in the buffer.
const accessLogFlush = time.Second

// accessLog is the -access-log destination. Lines are buffered and written
// out at least once a second: one write per request would cost a system
// call each, a tenth of what proxying a GET costs. A file is reopened on
// SIGHUP, so logrotate can move it away.
type accessLog struct {
	path string
	mu   sync.Mutex
	buf  *bufio.Writer
	file *os.File
	stop chan struct{}
	done sync.WaitGroup
}

// openAccessLog opens dest: a file, "-" for stdout, or "off" (or "").
func openAccessLog(dest string, stdout io.Writer) (*accessLog, error) {
	a := &accessLog{path: dest, stop: make(chan struct{})}
	switch dest {
	case "off", "":
		return a, nil
	case "-":
		a.path = ""
		a.buf = bufio.NewWriterSize(stdout, 64<<10)
	default:
		if err := a.reopen(); err != nil {
			return nil, err
		}
	}
	a.done.Add(1)
	go a.flushLoop()
	return a, nil
}

func (a *accessLog) flushLoop() {
	defer a.done.Done()
	t := time.NewTicker(accessLogFlush)
	defer t.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
			a.mu.Lock()
			a.buf.Flush()
			a.mu.Unlock()
		}
	}
}

// reopen (re)opens the file, writing out what the old one still buffered.
func (a *accessLog) reopen() error {
	if a.path == "" || a.path == "off" {
		return nil
	}
	f, err := os.OpenFile(a.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	a.mu.Lock()
	old := a.file
	if a.buf != nil {
		a.buf.Flush()
		a.buf.Reset(f)
	} else {
		a.buf = bufio.NewWriterSize(f, 64<<10)
	}
	a.file = f
	a.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

func (a *accessLog) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.buf.Write(p)
}

// logger returns the slog.Logger writing JSON lines here, nil when off.
func (a *accessLog) logger() *slog.Logger {
	if a.buf == nil {
		return nil
	}
	return slog.New(slog.NewJSONHandler(a, nil))
}

// Close writes out the buffer and closes the file.
func (a *accessLog) Close() error {
	if a.buf == nil {
		return nil
	}
	close(a.stop)
	a.done.Wait()
	a.mu.Lock()
	defer a.mu.Unlock()
	err := a.buf.Flush()
	if a.file != nil {
		if cerr := a.file.Close(); err == nil {
			err = cerr
		}
	}
	return err
}
