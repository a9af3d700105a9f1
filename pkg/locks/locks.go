// Package locks provides per-key operation locks. A second operation on a key
// that is busy fails at once instead of queueing, so a CO's retries never pile
// up behind a stuck operation.
package locks

import (
	"fmt"
	"sync"

	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// Set is a set of keys with an operation in progress.
type Set struct {
	mu   sync.Mutex
	busy map[string]struct{}
}

// New returns an empty Set.
func New() *Set { return &Set{busy: map[string]struct{}{}} }

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
		s.busy[k] = struct{}{}
	}
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, k := range keys {
			delete(s.busy, k)
		}
	}, nil
}
