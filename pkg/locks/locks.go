// Package locks provides per-key operation locks. A second operation on a key
// that is busy fails at once instead of queueing (TryLock), so a CO's retries
// never pile up behind a stuck operation. Where operations on different
// objects must merely take turns on a shared key, such as the volumes
// published to one node, Wait queues for it instead, as long as the caller's
// context allows.
package locks

import (
	"context"
	"fmt"
	"sync"

	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// Set is a set of keys with an operation in progress.
type Set struct {
	mu sync.Mutex
	// busy holds, for each key taken, a channel closed on its release.
	busy map[string]chan struct{}
}

// New returns an empty Set.
func New() *Set { return &Set{busy: map[string]chan struct{}{}} }

// TryLock takes the locks for all keys, or none of them. It returns an
// Aborted error naming the first busy key. The returned function releases them.
func (s *Set) TryLock(keys ...string) (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		if _, ok := s.busy[k]; ok {
			return nil, fmt.Errorf("%w: an operation on %s is already in progress", csierr.ErrAborted, k)
		}
	}
	for _, k := range keys {
		s.busy[k] = make(chan struct{})
	}
	return func() { s.release(keys) }, nil
}

// Wait takes the lock for key, waiting while it is busy until ctx is done;
// then it returns ctx's error. The returned function releases the lock.
func (s *Set) Wait(ctx context.Context, key string) (release func(), err error) {
	for {
		s.mu.Lock()
		freed, ok := s.busy[key]
		if !ok {
			s.busy[key] = make(chan struct{})
			s.mu.Unlock()
			return func() { s.release([]string{key}) }, nil
		}
		s.mu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the operation on %s: %w", key, ctx.Err())
		}
	}
}

func (s *Set) release(keys []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		close(s.busy[k])
		delete(s.busy, k)
	}
}
