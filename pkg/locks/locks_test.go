package locks

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

func TestTryLock(t *testing.T) {
	s := New()
	release, err := s.TryLock("volume a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.TryLock("volume b", "volume a"); !errors.Is(err, csierr.ErrAborted) {
		t.Fatalf("second lock on a busy key: got %v, want Aborted", err)
	}
	// The failed attempt must not have taken "volume b".
	rb, err := s.TryLock("volume b")
	if err != nil {
		t.Fatalf("volume b should be free: %v", err)
	}
	rb()
	release()
	if _, err := s.TryLock("volume a"); err != nil {
		t.Fatalf("released key still busy: %v", err)
	}
}

func TestWait(t *testing.T) {
	s := New()
	release, err := s.TryLock("node n")
	if err != nil {
		t.Fatal(err)
	}
	// A waiter gets the key once it is released, not before.
	got := make(chan func(), 1)
	go func() {
		r, err := s.Wait(context.Background(), "node n")
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	select {
	case <-got:
		t.Fatal("Wait took a busy key")
	case <-time.After(50 * time.Millisecond):
	}
	release()
	var r func()
	select {
	case r = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not take the released key")
	}
	// The waiter holds it now: TryLock fails, and a second Wait ends with
	// its context.
	if _, err := s.TryLock("node n"); !errors.Is(err, csierr.ErrAborted) {
		t.Fatalf("TryLock on a key a waiter took: got %v, want Aborted", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := s.Wait(ctx, "node n"); !errors.Is(err, context.DeadlineExceeded) || csierr.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Wait past its deadline: got %v, want DeadlineExceeded", err)
	}
	// Other keys are not held up.
	other, err := s.Wait(context.Background(), "node m")
	if err != nil {
		t.Fatal(err)
	}
	other()
	r()
}

// Many waiters on one key hold it one at a time, and each gets it.
func TestWaitTakesTurns(t *testing.T) {
	s := New()
	var inside, done atomic.Int32
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			release, err := s.Wait(context.Background(), "node n")
			if err != nil {
				t.Error(err)
				return
			}
			if n := inside.Add(1); n != 1 {
				t.Errorf("%d holders at once", n)
			}
			time.Sleep(time.Millisecond)
			inside.Add(-1)
			done.Add(1)
			release()
		}()
	}
	wg.Wait()
	if n := done.Load(); n != 32 {
		t.Fatalf("%d of 32 waiters got the key", n)
	}
}
