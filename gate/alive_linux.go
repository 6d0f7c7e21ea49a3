//go:build linux

package gate

import (
	"net"
	"syscall"
)

// connAlive reports whether an idle connection is still open: nothing to
// read and no end of stream, checked with a non-blocking peek so that a
// request whose body cannot be replayed is not written into a connection
// the upstream has already closed.
func connAlive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = n < 0 && (err == syscall.EAGAIN || err == syscall.EWOULDBLOCK)
		return true
	})
	return err == nil && alive
}
