//go:build !linux

package uring

import (
	"errors"
	"syscall"
)

// A Message is one send, Buf to the socket FD, and what came of it.
type Message struct {
	FD  int
	Buf []byte
	N   int
	Err syscall.Errno
}

// Ring is io_uring's, which only Linux has.
type Ring struct{}

// New fails: send one write at a time.
func New(entries int) (*Ring, error) { return nil, errors.ErrUnsupported }

func (r *Ring) Send(msgs []Message) error { return errors.ErrUnsupported }
func (r *Ring) Close() error              { return nil }
