package fakecloud

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"
)

// resource is a volume or server that an action locks while it runs.
type resource struct {
	kind string // "volume" or "server"
	id   int64
}

// effect is the work an action does when it finishes. It runs without the
// cloud's lock (devices take time) and returns what to change in the
// cloud's state, which runs under the lock together with the action's
// completion, and the action's error if it failed.
type effect func() (commit func(), failure *schema.ActionError)

// action is a running or finished action.
type action struct {
	schema.Action
	effect effect
	timer  *time.Timer
	next   *action // starts when this one succeeds, fails with it otherwise
	// rollback undoes, under the lock, what the request did when the
	// action fails: a failed creation leaves no volume.
	rollback func()
}

// startAction starts an action that locks res and finishes after the
// command's delay. Callers hold c.mu and have checked that res is free.
func (c *Cloud) startAction(command string, res []resource, do effect) *action {
	a := c.newAction(command, res, do)
	c.schedule(a)
	return a
}

// newAction records a running action that has not started its work yet.
// Callers hold c.mu.
func (c *Cloud) newAction(command string, res []resource, do effect) *action {
	a := &action{effect: do, Action: schema.Action{
		ID:       c.nextID("action"),
		Command:  command,
		Status:   "running",
		Progress: 0,
		Started:  time.Now().UTC(),
	}}
	for _, r := range res {
		a.Resources = append(a.Resources, schema.ActionResourceReference{ID: r.id, Type: r.kind})
	}
	c.actions[a.ID] = a
	return a
}

// schedule locks an action's resources and finishes it after its
// command's delay. Callers hold c.mu.
func (c *Cloud) schedule(a *action) {
	for _, ref := range a.Resources {
		c.busy[resource{ref.Type, ref.ID}] = a
	}
	delay, ok := c.delays[a.Command]
	if !ok {
		delay = c.opts.ActionDelay
	}
	c.pending.Add(1)
	a.timer = time.AfterFunc(delay, func() {
		defer c.pending.Done()
		c.finish(a)
	})
}

// finish completes an action: its effect, or an injected failure.
func (c *Cloud) finish(a *action) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	var failure *schema.ActionError
	if queued := c.failActions[a.Command]; len(queued) > 0 {
		failure = &queued[0]
		c.failActions[a.Command] = queued[1:]
	}
	c.mu.Unlock()

	var commit func()
	if failure == nil && a.effect != nil {
		commit, failure = a.effect()
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if commit != nil {
		commit()
	}
	now := time.Now().UTC()
	a.Finished = &now
	a.Progress = 100
	a.Status = "success"
	if failure != nil {
		a.Status = "error"
		a.Error = failure
		if a.rollback != nil {
			a.rollback()
		}
	}
	for r, holder := range c.busy {
		if holder == a {
			delete(c.busy, r)
		}
	}
	if next := a.next; next != nil {
		if failure == nil {
			c.schedule(next)
		} else {
			next.Status, next.Error, next.Finished, next.Progress = "error", failure, &now, 100
		}
	}
}

// lockedBy returns the running action holding any of res, or nil.
// Callers hold c.mu.
func (c *Cloud) lockedBy(res ...resource) *action {
	for _, r := range res {
		if a := c.busy[r]; a != nil {
			return a
		}
	}
	return nil
}

func (c *Cloud) getAction(r *http.Request) (int, any, *apiError) {
	id, apiErr := pathID(r, "id", "action")
	if apiErr != nil {
		return 0, nil, apiErr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.actions[id]
	if !ok {
		return 0, nil, notFound("action")
	}
	return http.StatusOK, schema.ActionGetResponse{Action: a.Action}, nil
}

// listActions is GET /actions, which since 2025 needs the ids to list.
func (c *Cloud) listActions(r *http.Request) (int, any, *apiError) {
	if len(r.URL.Query()["id"]) == 0 {
		return 0, nil, invalidInput("id", "the ids of the actions to list are required")
	}
	return c.respondActions(r, func(*action) bool { return true })
}

// listVolumeActions is GET /volumes/{id}/actions.
func (c *Cloud) listVolumeActions(r *http.Request) (int, any, *apiError) {
	return c.actionsOf(r, "volume")
}

// listServerActions is GET /servers/{id}/actions.
func (c *Cloud) listServerActions(r *http.Request) (int, any, *apiError) {
	return c.actionsOf(r, "server")
}

func (c *Cloud) actionsOf(r *http.Request, kind string) (int, any, *apiError) {
	id, apiErr := pathID(r, "id", kind)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	c.mu.Lock()
	exists := false
	switch kind {
	case "volume":
		_, exists = c.volumes[id]
	case "server":
		_, exists = c.servers[id]
	}
	c.mu.Unlock()
	if !exists {
		return 0, nil, notFound(kind)
	}
	return c.respondActions(r, func(a *action) bool { return a.involves(resource{kind, id}) })
}

// listResourceActions is GET /volumes/actions: the actions on any volume.
func (c *Cloud) listResourceActions(kind string) handler {
	return func(r *http.Request) (int, any, *apiError) {
		return c.respondActions(r, func(a *action) bool { return a.involvesKind(kind) })
	}
}

// respondActions lists the actions that keep accepts and that match the
// id and status filters, sorted and paginated.
func (c *Cloud) respondActions(r *http.Request, keep func(*action) bool) (int, any, *apiError) {
	q := r.URL.Query()
	var ids []int64
	for _, s := range q["id"] {
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, nil, invalidInput("id", "must be an action id")
		}
		ids = append(ids, id)
	}
	for _, s := range q["status"] {
		if s != "running" && s != "success" && s != "error" {
			return 0, nil, invalidInput("status", "must be running, success or error")
		}
	}
	c.mu.Lock()
	var items []schema.Action
	for _, id := range sortedKeys(c.actions) {
		a := c.actions[id]
		if !keep(a) || (len(ids) > 0 && !slices.Contains(ids, a.ID)) ||
			(len(q["status"]) > 0 && !slices.Contains(q["status"], a.Status)) {
			continue
		}
		items = append(items, a.Action)
	}
	c.mu.Unlock()
	if apiErr := sortItems(items, q["sort"], map[string]func(a, b schema.Action) int{
		"id":       func(a, b schema.Action) int { return byInt64(a.ID, b.ID) },
		"command":  func(a, b schema.Action) int { return strings.Compare(a.Command, b.Command) },
		"status":   func(a, b schema.Action) int { return strings.Compare(a.Status, b.Status) },
		"progress": func(a, b schema.Action) int { return a.Progress - b.Progress },
		"started":  func(a, b schema.Action) int { return a.Started.Compare(b.Started) },
		"finished": func(a, b schema.Action) int { return finishedAt(a).Compare(finishedAt(b)) },
	}); apiErr != nil {
		return 0, nil, apiErr
	}
	page, m, apiErr := paginate(items, q)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	return http.StatusOK, struct {
		schema.ActionListResponse
		Meta meta `json:"meta"`
	}{schema.ActionListResponse{Actions: nonNil(page)}, m}, nil
}

func finishedAt(a schema.Action) time.Time {
	if a.Finished == nil {
		return time.Time{}
	}
	return *a.Finished
}

func (a *action) involves(r resource) bool {
	for _, ref := range a.Resources {
		if ref.Type == r.kind && ref.ID == r.id {
			return true
		}
	}
	return false
}

func (a *action) involvesKind(kind string) bool {
	for _, ref := range a.Resources {
		if ref.Type == kind {
			return true
		}
	}
	return false
}
