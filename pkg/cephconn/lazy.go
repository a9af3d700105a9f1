// Package cephconn is what the Ceph backends share to reach a cluster
// through librados: a connection made on first use by one attempt that
// every caller waits for (Lazy), dialled with the libraries' own output
// silenced (Dial, in a build with the tags ceph and cgo), the error
// number of what the libraries answer (Errno), and what ceph df says a
// pool can still take (MaxAvail).
package cephconn

import (
	"context"
	"errors"
	"sync"
	"syscall"
)

// ErrClosed is what Get answers once Close has run.
var ErrClosed = errors.New("the connection to Ceph is closed")

// Lazy is a value made on first use and kept, such as a connection. One
// attempt to make it runs at a time, and every caller meanwhile waits for
// that one, each no longer than its context allows: the attempt goes on
// without them and keeps what it makes. A failed attempt keeps nothing,
// so the next call makes another. The zero Lazy is ready for use.
type Lazy[T any] struct {
	mu      sync.Mutex
	val     T
	made    bool
	attempt *attempt[T] // the attempt under way, if any
	closed  bool
	release func(T) // Close's, for the value of an attempt it outlived
}

// attempt is one call of the function that makes the value.
type attempt[T any] struct {
	done chan struct{}
	val  T     // set before done closes
	err  error // set before done closes
}

// Get returns the value, made by dial first if need be. The dial of the
// attempt under way is the one that counts; it should be bounded by time
// itself (a connection by client_mount_timeout).
func (l *Lazy[T]) Get(ctx context.Context, dial func() (T, error)) (T, error) {
	var zero T
	l.mu.Lock()
	switch {
	case l.made:
		v := l.val
		l.mu.Unlock()
		return v, nil
	case l.closed:
		l.mu.Unlock()
		return zero, ErrClosed
	}
	a := l.attempt
	if a == nil {
		a = &attempt[T]{done: make(chan struct{})}
		l.attempt = a
		go l.run(a, dial)
	}
	l.mu.Unlock()
	select {
	case <-a.done:
		return a.val, a.err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

func (l *Lazy[T]) run(a *attempt[T], dial func() (T, error)) {
	v, err := dial()
	l.mu.Lock()
	l.attempt = nil
	switch {
	case err != nil:
	case l.closed:
		// Closed meanwhile: nobody is left to release it later.
		if l.release != nil {
			l.release(v)
		}
		err = ErrClosed
	default:
		l.val, l.made = v, true
	}
	l.mu.Unlock()
	if err == nil {
		a.val = v
	}
	a.err = err
	close(a.done)
}

// Close calls release (if not nil) on the value if it was made, and on
// the value of an attempt still under way when that ends; Get answers
// ErrClosed from now on.
func (l *Lazy[T]) Close(release func(T)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed, l.release = true, release
	if l.made && release != nil {
		release(l.val)
	}
	var zero T
	l.val, l.made = zero, false
}

// Errno is the error number of what librados, librbd or libcephfs
// answered (go-ceph's errors carry it, negated), 0 for another error.
func Errno(err error) syscall.Errno {
	var ce interface{ ErrorCode() int }
	if errors.As(err, &ce) {
		if n := ce.ErrorCode(); n < 0 {
			return syscall.Errno(-n)
		}
	}
	return 0
}
