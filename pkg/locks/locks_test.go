package locks

import (
	"errors"
	"testing"

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
