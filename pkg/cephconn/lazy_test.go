package cephconn

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// dialer counts its calls; each answers what the test sends on next.
type dialer struct {
	calls atomic.Int32
	next  chan result
}

type result struct {
	v   int
	err error
}

func newDialer() *dialer { return &dialer{next: make(chan result)} }

func (d *dialer) dial() (int, error) {
	d.calls.Add(1)
	r := <-d.next
	return r.v, r.err
}

// waitCalls waits until d has been called n times in all.
func (d *dialer) waitCalls(t *testing.T, n int32) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); d.calls.Load() < n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d calls of dial, want %d", d.calls.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// gets runs n calls of Get at once and returns their answers once all
// have answered.
func gets(l *Lazy[int], ctx context.Context, d *dialer, n int) func() []result {
	out := make([]result, n)
	var wg sync.WaitGroup
	for i := range out {
		wg.Go(func() { out[i].v, out[i].err = l.Get(ctx, d.dial) })
	}
	return func() []result { wg.Wait(); return out }
}

func TestLazySharesOneAttemptAndKeepsItsValue(t *testing.T) {
	var l Lazy[int]
	d := newDialer()
	wait := gets(&l, context.Background(), d, 5)
	d.waitCalls(t, 1)
	// Each of the others joins the attempt, or comes after it and finds
	// its value: none makes another.
	time.Sleep(20 * time.Millisecond)
	d.next <- result{v: 42}
	for i, r := range wait() {
		if r.v != 42 || r.err != nil {
			t.Errorf("call %d: %v, %v; want 42", i, r.v, r.err)
		}
	}
	if v, err := l.Get(context.Background(), d.dial); v != 42 || err != nil {
		t.Errorf("later call: %v, %v; want the kept 42", v, err)
	}
	if n := d.calls.Load(); n != 1 {
		t.Errorf("%d calls of dial, want 1", n)
	}
}

func TestLazyKeepsNoFailure(t *testing.T) {
	var l Lazy[int]
	d := newDialer()
	refused := errors.New("refused")
	wait := gets(&l, context.Background(), d, 1)
	d.next <- result{err: refused}
	if r := wait()[0]; !errors.Is(r.err, refused) {
		t.Errorf("got %v, %v; want the attempt's error", r.v, r.err)
	}
	// The next call makes its own attempt.
	wait = gets(&l, context.Background(), d, 1)
	d.waitCalls(t, 2)
	d.next <- result{v: 7}
	if r := wait()[0]; r.v != 7 || r.err != nil {
		t.Errorf("after a failure: %v, %v; want 7", r.v, r.err)
	}
}

func TestLazyWaitsNoLongerThanTheContext(t *testing.T) {
	var l Lazy[int]
	d := newDialer()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	for i, r := range gets(&l, ctx, d, 3)() {
		if !errors.Is(r.err, context.DeadlineExceeded) {
			t.Errorf("call %d: %v, %v; want the context's end", i, r.v, r.err)
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("calls with 50 ms answered after %v", took)
	}
	// The attempt went on without them, and keeps what it makes for the
	// next call; a call meanwhile waits for it.
	wait := gets(&l, context.Background(), d, 1)
	d.next <- result{v: 3}
	if r := wait()[0]; r.v != 3 || r.err != nil {
		t.Errorf("later call: %v, %v; want 3", r.v, r.err)
	}
	if n := d.calls.Load(); n != 1 {
		t.Errorf("%d calls of dial, want 1", n)
	}
}

func TestLazyClose(t *testing.T) {
	var released []int
	release := func(v int) { released = append(released, v) }

	var made Lazy[int]
	if v, err := made.Get(context.Background(), func() (int, error) { return 1, nil }); v != 1 || err != nil {
		t.Fatalf("get: %v, %v", v, err)
	}
	made.Close(release)
	made.Close(release) // once only
	if _, err := made.Get(context.Background(), func() (int, error) { return 9, nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("get after Close: %v, want ErrClosed", err)
	}

	// An attempt that outlives Close: its value is released when it
	// comes, and its callers get ErrClosed.
	var late Lazy[int]
	d := newDialer()
	wait := gets(&late, context.Background(), d, 2)
	d.waitCalls(t, 1)
	late.Close(release)
	d.next <- result{v: 2}
	for i, r := range wait() {
		if !errors.Is(r.err, ErrClosed) {
			t.Errorf("call %d: %v, %v; want ErrClosed", i, r.v, r.err)
		}
	}
	if fmt.Sprint(released) != "[1 2]" {
		t.Errorf("released %v, want [1 2]", released)
	}

	var never Lazy[int]
	never.Close(nil)
	if _, err := never.Get(context.Background(), func() (int, error) { return 1, nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("get after Close: %v, want ErrClosed", err)
	}
}

// cephError is an error as go-ceph's carry their number.
type cephError int

func (e cephError) Error() string  { return fmt.Sprintf("ret=%d", int(e)) }
func (e cephError) ErrorCode() int { return int(e) }

func TestErrno(t *testing.T) {
	for _, c := range []struct {
		err  error
		want syscall.Errno
	}{
		{cephError(-2), syscall.ENOENT},
		{fmt.Errorf("open: %w", cephError(-110)), syscall.ETIMEDOUT},
		{cephError(0), 0},
		{errors.New("no number"), 0},
		{nil, 0},
	} {
		if got := Errno(c.err); got != c.want {
			t.Errorf("Errno(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}
