// Package uring sends to many sockets with one system call: a small
// io_uring (Linux 5.6 and later) to which a batch of non-blocking sends is
// submitted at once.
//
// It exists for the relay's fan-out, which writes one event to thousands
// of waiting connections. A write(2) each costs a system call entry and
// exit per connection, which on CPUs with speculative-execution
// mitigations is a good part of the write; one io_uring_enter per batch
// pays it once.
//
// Every send is non-blocking (MSG_DONTWAIT): a socket whose buffer is full
// takes what fits or answers EAGAIN, and the ring never holds a send that
// waits. So when Send returns, the kernel is done with every descriptor
// and buffer it was given.
package uring

import (
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A Message is one send, Buf to the socket FD, and what came of it.
type Message struct {
	FD  int // skipped when negative
	Buf []byte
	N   int           // the bytes the socket took
	Err syscall.Errno // why it took none: EAGAIN when its buffer is full
}

// Ring submits sends. It is not safe for concurrent use.
type Ring struct {
	fd     int
	rings  []byte // the submission and completion rings, one mapping
	sqeMem []byte
	sqTail *uint32
	cqHead *uint32
	cqTail *uint32
	sqMask uint32
	cqMask uint32
	sqes   []sqe
	cqes   []cqe
	batch  []int // Send's, kept between calls
}

// The kernel's ABI (include/uapi/linux/io_uring.h).
const (
	opSend          = 26     // IORING_OP_SEND
	setupSubmitAll  = 1 << 7 // IORING_SETUP_SUBMIT_ALL: one bad entry does not stop the batch
	enterGetEvents  = 1 << 0 // IORING_ENTER_GETEVENTS
	featSingleMmap  = 1 << 0 // IORING_FEAT_SINGLE_MMAP (5.4)
	offSQEs         = 0x10000000
	sendFlags       = unix.MSG_DONTWAIT | unix.MSG_NOSIGNAL
	sqeSize         = 64
	cqeSize         = 16
	sqRingArraySize = 4
)

type sqRingOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqRingOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqRingOffsets
	cqOff                                                                  cqRingOffsets
}

type sqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	msgFlags    uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFDIn  int32
	addr3       uint64
	pad         uint64
}

type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// The entries' layout is the kernel's: these fail to compile otherwise.
var (
	_ = [1]struct{}{}[unsafe.Sizeof(sqe{})-sqeSize]
	_ = [1]struct{}{}[unsafe.Sizeof(cqe{})-cqeSize]
	_ = [1]struct{}{}[unsafe.Sizeof(params{})-120]
)

// New sets up a ring that takes up to entries sends per system call. It
// fails where io_uring is missing (before Linux 5.6) or refused (the
// kernel.io_uring_disabled sysctl, a seccomp filter, the memlock limit of
// kernels before 5.12): send one write at a time then.
func New(entries int) (*Ring, error) {
	if entries < 1 || entries > 4096 {
		return nil, fmt.Errorf("io_uring: %d entries: want 1 to 4096", entries)
	}
	p, fd, err := setup(entries, setupSubmitAll)
	if err == syscall.EINVAL { // before Linux 5.18
		p, fd, err = setup(entries, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("io_uring_setup: %w", err)
	}
	r := &Ring{fd: fd}
	if err := r.mapRings(p); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func setup(entries int, flags uint32) (*params, int, error) {
	p := &params{flags: flags}
	fd, _, errno := syscall.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(p)), 0)
	if errno != 0 {
		return nil, -1, errno
	}
	return p, int(fd), nil
}

func (r *Ring) mapRings(p *params) error {
	if p.features&featSingleMmap == 0 {
		return errors.New("io_uring: the kernel maps its rings apart (before Linux 5.4)")
	}
	size := max(p.sqOff.array+p.sqEntries*sqRingArraySize, p.cqOff.cqes+p.cqEntries*cqeSize)
	var err error
	r.rings, err = unix.Mmap(r.fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("io_uring: mapping the rings: %w", err)
	}
	r.sqeMem, err = unix.Mmap(r.fd, offSQEs, int(p.sqEntries)*sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("io_uring: mapping the submission entries: %w", err)
	}
	r.sqTail = r.u32(p.sqOff.tail)
	r.sqMask = *r.u32(p.sqOff.ringMask)
	r.cqHead = r.u32(p.cqOff.head)
	r.cqTail = r.u32(p.cqOff.tail)
	r.cqMask = *r.u32(p.cqOff.ringMask)
	r.sqes = unsafe.Slice((*sqe)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	r.cqes = unsafe.Slice((*cqe)(unsafe.Pointer(&r.rings[p.cqOff.cqes])), p.cqEntries)
	r.batch = make([]int, 0, p.sqEntries)
	// Entry i of the submission ring is always submission entry i.
	array := unsafe.Slice(r.u32(p.sqOff.array), p.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	return nil
}

func (r *Ring) u32(off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&r.rings[off])) }

// Send sends every message with a non-negative FD and a non-empty Buf,
// Entries at a time, and sets its N and Err. The caller keeps each FD
// open until Send returns. (A kernel with io_uring but without its send,
// before Linux 5.6, answers each with EINVAL.)
//
// An error says that the ring failed: the messages it did not send are
// left with N 0 and Err EAGAIN (nothing sent: send them another way), and
// the ring must be closed.
func (r *Ring) Send(msgs []Message) error {
	for i := range msgs {
		msgs[i].N, msgs[i].Err = 0, syscall.EAGAIN
	}
	batch := r.batch[:0]
	for i := range msgs {
		if msgs[i].FD < 0 || len(msgs[i].Buf) == 0 {
			msgs[i].Err = 0
			continue
		}
		if batch = append(batch, i); len(batch) == len(r.sqes) {
			if err := r.send(msgs, batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	return r.send(msgs, batch)
}

// send submits the messages of batch and collects their results.
func (r *Ring) send(msgs []Message, batch []int) error {
	n := len(batch)
	if n == 0 {
		return nil
	}
	tail := atomic.LoadUint32(r.sqTail)
	for k, i := range batch {
		m := &msgs[i]
		r.sqes[(tail+uint32(k))&r.sqMask] = sqe{
			opcode:   opSend,
			fd:       int32(m.FD),
			addr:     uint64(uintptr(unsafe.Pointer(&m.Buf[0]))),
			len:      uint32(len(m.Buf)),
			msgFlags: sendFlags,
			userData: uint64(i),
		}
	}
	atomic.StoreUint32(r.sqTail, tail+uint32(n))
	submitted, err := r.enter(uint32(n), 0, 0)
	if err != nil {
		return fmt.Errorf("io_uring_enter: %w", err)
	}
	if submitted != n {
		// The kernel stopped part way (one without SUBMIT_ALL meeting a
		// bad entry): the entries left must never run, so the ring goes.
		r.collect(msgs)
		return fmt.Errorf("io_uring_enter: %d of %d sends submitted", submitted, n)
	}
	// Non-blocking sends complete during the submission; waiting is only
	// for a kernel that completes them later.
	for left := n - r.collect(msgs); left > 0; left -= r.collect(msgs) {
		if _, err := r.enter(0, uint32(left), enterGetEvents); err != nil {
			return fmt.Errorf("io_uring_enter (waiting): %w", err)
		}
	}
	return nil
}

// collect takes the completions posted so far and says how many.
func (r *Ring) collect(msgs []Message) int {
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail)
	for h := head; h != tail; h++ {
		c := r.cqes[h&r.cqMask]
		m := &msgs[c.userData]
		if c.res < 0 {
			m.N, m.Err = 0, syscall.Errno(-c.res)
		} else {
			m.N, m.Err = int(c.res), 0
		}
	}
	atomic.StoreUint32(r.cqHead, tail)
	return int(tail - head)
}

// enter is io_uring_enter, again when a signal (the Go runtime's
// preemption among them) interrupts it.
func (r *Ring) enter(toSubmit, minComplete, flags uint32) (int, error) {
	for {
		n, _, errno := syscall.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), uintptr(minComplete), uintptr(flags), 0, 0)
		switch errno {
		case 0:
			return int(n), nil
		case syscall.EINTR:
			continue
		}
		return 0, errno
	}
}

// Close releases the ring.
func (r *Ring) Close() error {
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
		r.sqeMem = nil
	}
	if r.rings != nil {
		unix.Munmap(r.rings)
		r.rings = nil
	}
	if r.fd < 0 {
		return nil
	}
	err := syscall.Close(r.fd)
	r.fd = -1
	return err
}
