package hcloud

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
)

// Polling for actions: the API allows 3600 requests an hour, so a wait
// polls when its actions are likely done rather than on a fixed schedule.
const (
	pollFirst = 100 * time.Millisecond
	pollCap   = time.Second
	// firstGuess is how long an action is expected to take before any
	// has finished: about what Hetzner's volume actions take. A tenth of
	// the wait budget bounds it, so that a short budget still polls.
	firstGuess = time.Second
)

// pace remembers how long each command's actions take (a moving average
// of what the API reports), so that the first poll of a fresh action
// comes about when it finishes. A command not seen yet is expected to
// take what the others take on average.
type pace struct {
	mu   sync.Mutex
	took map[string]time.Duration
}

func (p *pace) expect(command string) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if d, ok := p.took[command]; ok || len(p.took) == 0 {
		return d
	}
	var sum time.Duration
	for _, d := range p.took {
		sum += d
	}
	return sum / time.Duration(len(p.took))
}

func (p *pace) record(command string, d time.Duration) {
	if d <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.took == nil {
		p.took = map[string]time.Duration{}
	}
	if old, ok := p.took[command]; ok {
		d = (7*old + 3*d) / 10
	}
	p.took[command] = d
}

// await waits for actions this call started; one that fails is the error.
func (o *op) await(actions ...*hcloud.Action) error { return o.watch(actions, true, true) }

// watch polls actions until none runs, within the call's budget. With
// fresh (the call started them just now) the first poll waits for their
// expected duration. With failOnError an action that failed is the error.
func (o *op) watch(actions []*hcloud.Action, fresh, failOnError bool) error {
	running := map[int64]*hcloud.Action{}
	var delay time.Duration
	if !fresh {
		delay = pollFirst
	}
	for _, a := range actions {
		switch {
		case a == nil:
		case a.Status == hcloud.ActionStatusRunning:
			running[a.ID] = a
			if fresh {
				d := o.b.pace.expect(a.Command)
				if d == 0 {
					d = min(firstGuess, o.b.cfg.Wait/10)
				}
				// A little past the expected end, so that one poll
				// usually finds it done.
				delay = max(delay, d+d/20+20*time.Millisecond)
			}
		case failOnError && a.Status == hcloud.ActionStatusError:
			return a.Error()
		}
	}
	for attempt := 0; len(running) > 0; attempt++ {
		select {
		case <-o.ctx.Done():
			return fmt.Errorf("%w: actions %v still running", o.ctx.Err(), slices.Sorted(maps.Keys(running)))
		case <-time.After(delay):
		}
		delay = min(pollFirst<<min(attempt+1, 8), pollCap)
		updates, err := o.api.Action.AllWithOpts(o.ctx, hcloud.ActionListOpts{ID: slices.Sorted(maps.Keys(running))})
		if err != nil {
			return err
		}
		if len(updates) != len(running) {
			return fmt.Errorf("the API lists %d of the running actions %v", len(updates), slices.Sorted(maps.Keys(running)))
		}
		for _, u := range updates {
			if u.Status == hcloud.ActionStatusRunning {
				continue
			}
			delete(running, u.ID)
			if !u.Finished.IsZero() {
				o.b.pace.record(u.Command, u.Finished.Sub(u.Started))
			}
			if failOnError && u.Status == hcloud.ActionStatusError {
				return u.Error()
			}
		}
	}
	return nil
}

// lockServer takes this process's turn at attaching to or detaching from
// a server. The API runs one such action per server at a time and
// answers "locked" to the others; queueing here instead spares the
// requests of calls that would only be refused. Waiting counts against
// the call's budget.
func (o *op) lockServer(id int64) (func(), error) {
	key := serverKey{o.token, id}
	o.b.mu.Lock()
	turn := o.b.serverTurns[key]
	if turn == nil {
		turn = make(chan struct{}, 1)
		o.b.serverTurns[key] = turn
	}
	o.b.mu.Unlock()
	select {
	case turn <- struct{}{}:
		return func() { <-turn }, nil
	case <-o.ctx.Done():
		return nil, o.ctx.Err()
	}
}
