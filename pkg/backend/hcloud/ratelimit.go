package hcloud

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

// reserveShare: while fewer than 1/reserveShare of a token's requests are
// left (a minute's worth of Hetzner's 3600 an hour), requests go out one
// at a time at the pace the budget refills, and never one the budget does
// not hold: the others using the project (the nodes' drivers, hcloud,
// terraform) keep their share, and the API has nothing to refuse.
const reserveShare = 60

// budget paces one token's API requests by the budget the API reports
// with every answer (RateLimit-Limit, -Remaining and -Reset), and by the
// Retry-After of a 429. A request that would have to wait longer than its
// call's time allows is not sent: the call answers Unavailable at once,
// saying when to retry, and Swarm retries later. So a spent budget never
// turns into a storm of refused requests.
type budget struct {
	base http.RoundTripper
	log  *slog.Logger

	mu        sync.Mutex
	known     bool    // an answer has told the budget
	limit     float64 // requests the budget holds
	tokens    float64 // requests left at the time at, less those sent since
	at        time.Time
	per       time.Duration // how long the budget takes to refill by one
	next      time.Time     // below the reserve: when the next request may go
	notBefore time.Time     // a 429's Retry-After
	pacing    bool          // in a spell of waiting, logged once: until a quarter of the budget is back
}

// errBudgetSpent is a request not sent because the budget is spent.
type errBudgetSpent struct{ wait time.Duration }

func (e *errBudgetSpent) Error() string {
	return fmt.Sprintf("the Hetzner Cloud API request budget of this token is spent; retry after %ds", int(math.Ceil(e.wait.Seconds())))
}

func (b *budget) RoundTrip(r *http.Request) (*http.Response, error) {
	wait, err := b.take(r.Context())
	if err != nil {
		return nil, err
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-r.Context().Done():
			t.Stop()
			return nil, r.Context().Err()
		case <-t.C:
		}
	}
	resp, err := b.base.RoundTrip(r)
	if err == nil {
		b.learn(resp)
	}
	return resp, err
}

// take spends one request of the budget and says how long to wait before
// sending it, or refuses it when the wait outlasts ctx.
func (b *budget) take(ctx context.Context) (time.Duration, error) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.known {
		return 0, nil
	}
	b.tokens = min(b.limit, b.tokens+float64(now.Sub(b.at))/float64(b.per))
	b.at = now
	var wait time.Duration
	low := b.tokens < max(1, b.limit/reserveShare)+1
	if low {
		wait = max(time.Duration((1-b.tokens)*float64(b.per)), b.next.Sub(now))
	}
	wait = max(wait, b.notBefore.Sub(now))
	next := b.next
	if low {
		b.next = now.Add(wait + b.per)
	}
	if wait <= 0 {
		if b.pacing && b.tokens >= b.limit/4 {
			b.pacing = false
			b.log.Info("Hetzner Cloud API budget recovered: requests go out at once again", "remaining", int(b.tokens))
		}
		b.tokens--
		return 0, nil
	}
	if !b.pacing {
		b.pacing = true
		b.log.Warn("Hetzner Cloud API budget low: requests wait for it to refill, calls that cannot wait answer Unavailable",
			"remaining", int(b.tokens), "wait", wait.Round(time.Millisecond))
	}
	if deadline, ok := ctx.Deadline(); ok && now.Add(wait).After(deadline) {
		b.next = next // not sent: its turn is free
		metrics.RateLimited("hcloud", "refused")
		return 0, &errBudgetSpent{wait}
	}
	metrics.RateLimited("hcloud", "waited")
	b.tokens--
	return wait, nil
}

// learn takes the budget from an answer's headers.
func (b *budget) learn(resp *http.Response) {
	h := resp.Header
	limit, err1 := strconv.Atoi(h.Get("RateLimit-Limit"))
	remaining, err2 := strconv.Atoi(h.Get("RateLimit-Remaining"))
	reset, err3 := strconv.ParseInt(h.Get("RateLimit-Reset"), 10, 64)
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if resp.StatusCode == http.StatusTooManyRequests {
		if s, err := strconv.Atoi(h.Get("Retry-After")); err == nil && s > 0 {
			b.notBefore = now.Add(time.Duration(s) * time.Second)
		}
	}
	if err1 != nil || err2 != nil || err3 != nil || limit <= 0 || remaining < 0 || remaining > limit {
		return
	}
	metrics.RateLimitRemaining("hcloud", remaining)
	if !b.known {
		b.known, b.per = true, time.Hour/time.Duration(limit) // Hetzner's: the limit refills in an hour
	}
	if short := limit - remaining; short > 0 {
		// The reset is in whole seconds: taken as the end of its second,
		// the refill is never thought faster than it is.
		if full := time.Unix(reset+1, 0).Sub(now); full > 0 {
			b.per = full / time.Duration(short)
		}
	}
	b.limit, b.tokens, b.at = float64(limit), float64(remaining), now
}
