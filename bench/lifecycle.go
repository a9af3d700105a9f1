package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// stepTimeout bounds one step. Steps do not see Ctrl-C: an interrupted run
// lets the steps in flight finish, then undoes them cleanly.
const stepTimeout = 2 * time.Minute

type step struct {
	name string
	do   func(context.Context) error
	undo *step // the teardown step reversing this one, if any
}

// lifecycle is one volume's setup steps; its teardown is their undo steps
// in reverse order.
type lifecycle struct {
	name  string
	dirs  []string // created, untimed, before the first step
	setup []step
}

func (l *lifecycle) teardown() []step {
	var steps []step
	for i := len(l.setup) - 1; i >= 0; i-- {
		if u := l.setup[i].undo; u != nil {
			steps = append(steps, *u)
		}
	}
	return steps
}

func (l *lifecycle) stepNames() []string {
	var names []string
	for _, s := range append(l.setup, l.teardown()...) {
		names = append(names, s.name)
	}
	return names
}

// timing is how long each step of a whole lifecycle took, and their sum.
type timing struct {
	steps []time.Duration
	total time.Duration
}

// run does the whole lifecycle, setup then teardown.
func (l *lifecycle) run(ctx context.Context) (timing, error) {
	up, err := l.up(ctx)
	if err != nil {
		return timing{}, err
	}
	down, err := l.down(ctx)
	if err != nil {
		return timing{}, err
	}
	t := timing{steps: append(up, down...)}
	for _, d := range t.steps {
		t.total += d
	}
	return t, nil
}

// up runs the setup steps, stopping early if ctx is cancelled. On failure
// it undoes the steps that succeeded.
func (l *lifecycle) up(ctx context.Context) ([]time.Duration, error) {
	for _, d := range l.dirs {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, err
		}
	}
	ds, err := runSteps(ctx, l.setup, true)
	if err != nil {
		done := &lifecycle{setup: l.setup[:len(ds)]}
		bestEffort(ctx, done.teardown())
		return nil, fmt.Errorf("%s: %w", l.name, err)
	}
	return ds, nil
}

// down runs the teardown steps. After a failure it still tries the rest.
func (l *lifecycle) down(ctx context.Context) ([]time.Duration, error) {
	steps := l.teardown()
	ds, err := runSteps(ctx, steps, false)
	if err != nil {
		bestEffort(ctx, steps[len(ds)+1:])
		return nil, fmt.Errorf("%s: %w", l.name, err)
	}
	return ds, nil
}

func runSteps(ctx context.Context, steps []step, stopOnCancel bool) ([]time.Duration, error) {
	ds := make([]time.Duration, 0, len(steps))
	for _, s := range steps {
		if err := ctx.Err(); stopOnCancel && err != nil {
			return ds, err
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stepTimeout)
		start := time.Now()
		err := s.do(sctx)
		d := time.Since(start)
		cancel()
		if err != nil {
			return ds, fmt.Errorf("%s: %w", s.name, err)
		}
		ds = append(ds, d)
	}
	return ds, nil
}

// bestEffort runs cleanup steps, ignoring errors: whatever they leave
// behind, the final sweep removes.
func bestEffort(ctx context.Context, steps []step) {
	for _, s := range steps {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stepTimeout)
		_ = s.do(sctx)
		cancel()
	}
}

// side is one contender, driver or raw, and its samples.
type side struct {
	name         string
	newLifecycle func(vol, fs string, size int64) *lifecycle

	mu    sync.Mutex
	steps []string
	times [][]time.Duration // per step
	total []time.Duration
	wall  time.Duration
}

func (s *side) add(names []string, t timing) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.steps == nil {
		s.steps = names
		s.times = make([][]time.Duration, len(names))
	}
	for i, d := range t.steps {
		s.times[i] = append(s.times[i], d)
	}
	s.total = append(s.total, t.total)
}

// batch runs n lifecycles at once and records their timings and wall time.
func (s *side) batch(ctx context.Context, n int, newLifecycle func(i int) *lifecycle) error {
	start := time.Now()
	err := forEach(n, n, func(i int) error {
		l := newLifecycle(i)
		t, err := l.run(ctx)
		if err == nil {
			s.add(l.stepNames(), t)
		}
		return err
	})
	s.wall += time.Since(start)
	return err
}

// forEach calls fn(0..n-1), at most p at once, and returns the first error
// (all calls run regardless).
func forEach(n, p int, fn func(i int) error) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, p)
	)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := fn(i); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) == 0 {
		return nil
	}
	// Report a real failure rather than the cancellations it caused.
	first := errs[0]
	for _, err := range errs {
		if !errors.Is(err, context.Canceled) {
			first = err
			break
		}
	}
	if len(errs) == 1 {
		return first
	}
	return fmt.Errorf("%w (and %d more errors)", first, len(errs)-1)
}
