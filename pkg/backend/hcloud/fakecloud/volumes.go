package fakecloud

import (
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
)

// volume is a volume of the fake project.
type volume struct {
	schema.Volume
	device string // what its by-id link points at while attached
}

func (v *volume) view() schema.Volume {
	out := v.Volume
	out.Labels = maps.Clone(v.Labels)
	if v.Server != nil {
		id := *v.Server
		out.Server = &id
	}
	return out
}

// volumeNamePattern is what the fake accepts as a volume name.
var volumeNamePattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,62}[A-Za-z0-9])?$`)

func (c *Cloud) listVolumes(r *http.Request) (int, any, *apiError) {
	q := r.URL.Query()
	sel, apiErr := parseSelector(q.Get("label_selector"))
	if apiErr != nil {
		return 0, nil, apiErr
	}
	for _, s := range q["status"] {
		if s != "creating" && s != "available" {
			return 0, nil, invalidInput("status", "must be creating or available")
		}
	}
	c.mu.Lock()
	var items []schema.Volume
	for _, id := range sortedKeys(c.volumes) {
		v := c.volumes[id]
		if (q.Get("name") != "" && v.Name != q.Get("name")) ||
			(len(q["status"]) > 0 && !slices.Contains(q["status"], v.Status)) || !sel.matches(v.Labels) {
			continue
		}
		items = append(items, v.view())
	}
	c.mu.Unlock()
	if apiErr := sortItems(items, q["sort"], map[string]func(a, b schema.Volume) int{
		"id":      func(a, b schema.Volume) int { return byInt64(a.ID, b.ID) },
		"name":    func(a, b schema.Volume) int { return strings.Compare(a.Name, b.Name) },
		"created": func(a, b schema.Volume) int { return a.Created.Compare(b.Created) },
	}); apiErr != nil {
		return 0, nil, apiErr
	}
	page, m, apiErr := paginate(items, q)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	return http.StatusOK, struct {
		schema.VolumeListResponse
		Meta meta `json:"meta"`
	}{schema.VolumeListResponse{Volumes: nonNil(page)}, m}, nil
}

// volumeFor finds the volume of the {id} path value. Callers hold c.mu.
func (c *Cloud) volumeFor(r *http.Request) (*volume, *apiError) {
	id, apiErr := pathID(r, "id", "volume")
	if apiErr != nil {
		return nil, apiErr
	}
	v, ok := c.volumes[id]
	if !ok {
		return nil, notFound("volume")
	}
	return v, nil
}

func (c *Cloud) getVolume(r *http.Request) (int, any, *apiError) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, apiErr := c.volumeFor(r)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	return http.StatusOK, schema.VolumeGetResponse{Volume: v.view()}, nil
}

func (c *Cloud) createVolume(r *http.Request) (int, any, *apiError) {
	var req schema.VolumeCreateRequest
	if apiErr := decode(r, &req); apiErr != nil {
		return 0, nil, apiErr
	}
	switch {
	case !volumeNamePattern.MatchString(req.Name):
		return 0, nil, invalidInput("name", "must be 1 to 64 letters, digits, '.', '_' and '-', starting and ending with a letter or digit")
	case req.Size < MinVolumeGiB || req.Size > MaxVolumeGiB:
		return 0, nil, invalidInput("size", fmt.Sprintf("must be between %d and %d GB", MinVolumeGiB, MaxVolumeGiB))
	case (req.Location == nil) == (req.Server == nil):
		return 0, nil, invalidInput("location", "give either a location or a server")
	case req.Automount != nil && *req.Automount && req.Server == nil:
		return 0, nil, invalidInput("automount", "automount needs a server")
	case req.Format != nil && *req.Format != "ext4" && *req.Format != "xfs":
		return 0, nil, invalidInput("format", "must be ext4 or xfs")
	}
	labels := map[string]string{}
	if req.Labels != nil {
		labels = maps.Clone(*req.Labels)
	}
	if apiErr := checkLabels(labels); apiErr != nil {
		return 0, nil, apiErr
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	var loc schema.Location
	var srv *server
	if req.Server != nil {
		s, ok := c.servers[*req.Server]
		if !ok {
			return 0, nil, invalidInput("server", "server not found")
		}
		if a := c.lockedBy(resource{"server", s.ID}); a != nil {
			return 0, nil, lockedError("server", a)
		}
		if len(s.Volumes) >= MaxVolumesPerServer {
			return 0, nil, attachLimit(s)
		}
		srv, loc = s, s.Location
	} else {
		l, ok := c.location(req.Location.Name)
		if !ok && req.Location.ID != 0 {
			l, ok = c.location(strconv.FormatInt(req.Location.ID, 10))
		}
		if !ok {
			return 0, nil, invalidInput("location", "location not found")
		}
		loc = l
	}
	for _, other := range c.volumes {
		if other.Name == req.Name {
			return 0, nil, &apiError{status: http.StatusConflict, code: "uniqueness_error", message: "name is already used",
				details: map[string]any{"fields": []map[string]any{{"name": "name"}}}}
		}
	}
	id := c.nextID("volume")
	v := &volume{Volume: schema.Volume{
		ID:          id,
		Name:        req.Name,
		Status:      "creating",
		Location:    loc,
		Size:        req.Size,
		Labels:      labels,
		LinuxDevice: "/dev/disk/by-id/" + DevicePrefix + strconv.FormatInt(id, 10),
		Created:     time.Now().UTC().Truncate(time.Second),
	}}
	c.volumes[id] = v
	create := c.startAction("create_volume", []resource{{"volume", id}}, c.createEffect(v, req.Format))
	create.rollback = func() {
		delete(c.volumes, id)
		_ = c.removeImage(id)
	}
	created := create.Action // a copy: the action changes when it finishes
	resp := schema.VolumeCreateResponse{Volume: v.view(), Action: &created, NextActions: []schema.Action{}}
	if srv != nil {
		// The attach follows the creation; until then the volume is
		// locked by the create action, so it starts once that is done.
		attach := c.queueAction(create, "attach_volume", []resource{{"volume", id}, {"server", srv.ID}}, c.attachEffect(v, srv))
		resp.NextActions = append(resp.NextActions, attach.Action)
	}
	return http.StatusCreated, resp, nil
}

// queueAction returns an action that starts when after has succeeded, as
// the next_actions of a request do, and fails if after fails. Callers hold
// c.mu.
func (c *Cloud) queueAction(after *action, command string, res []resource, do effect) *action {
	after.next = c.newAction(command, res, do)
	return after.next
}

func (c *Cloud) createEffect(v *volume, format *string) effect {
	id, size := v.ID, int64(v.Size)*backend.GiB
	return func() (func(), *schema.ActionError) {
		if err := c.createImage(id, size, format); err != nil {
			return nil, &schema.ActionError{Code: "action_failed", Message: "volume not created: " + err.Error()}
		}
		return func() {
			v.Status = "available"
			v.Format = format
		}, nil
	}
}

func (c *Cloud) updateVolume(r *http.Request) (int, any, *apiError) {
	var req schema.VolumeUpdateRequest
	if apiErr := decode(r, &req); apiErr != nil {
		return 0, nil, apiErr
	}
	if req.Name != "" && !volumeNamePattern.MatchString(req.Name) {
		return 0, nil, invalidInput("name", "invalid name")
	}
	if req.Labels != nil {
		if apiErr := checkLabels(*req.Labels); apiErr != nil {
			return 0, nil, apiErr
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, apiErr := c.volumeFor(r)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	if req.Name != "" && req.Name != v.Name {
		for _, other := range c.volumes {
			if other.Name == req.Name {
				return 0, nil, &apiError{status: http.StatusConflict, code: "uniqueness_error", message: "name is already used"}
			}
		}
		v.Name = req.Name
	}
	if req.Labels != nil {
		v.Labels = maps.Clone(*req.Labels)
		if v.Labels == nil {
			v.Labels = map[string]string{}
		}
	}
	return http.StatusOK, schema.VolumeUpdateResponse{Volume: v.view()}, nil
}

func (c *Cloud) deleteVolume(r *http.Request) (int, any, *apiError) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, apiErr := c.volumeFor(r)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	switch {
	case v.Protection.Delete:
		return 0, nil, &apiError{status: http.StatusLocked, code: "protected", message: "volume is protected against deletion"}
	case c.lockedBy(resource{"volume", v.ID}) != nil:
		return 0, nil, lockedError("volume", c.lockedBy(resource{"volume", v.ID}))
	case v.Server != nil:
		return 0, nil, &apiError{status: http.StatusConflict, code: "volume_already_attached",
			message: fmt.Sprintf("volume is attached to server %d, detach first", *v.Server)}
	}
	if err := c.removeImage(v.ID); err != nil {
		return 0, nil, &apiError{status: http.StatusInternalServerError, code: "server_error", message: err.Error()}
	}
	delete(c.volumes, v.ID)
	return http.StatusNoContent, nil, nil
}

func attachLimit(s *server) *apiError {
	return &apiError{status: http.StatusForbidden, code: "limit_exceeded_error",
		message: fmt.Sprintf("server %d has %d volumes attached, the most a server takes", s.ID, MaxVolumesPerServer)}
}

func (c *Cloud) attachVolume(r *http.Request) (int, any, *apiError) {
	var req schema.VolumeActionAttachVolumeRequest
	if apiErr := decode(r, &req); apiErr != nil {
		return 0, nil, apiErr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, apiErr := c.volumeFor(r)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	s, ok := c.servers[req.Server]
	if !ok {
		return 0, nil, invalidInput("server", "server not found")
	}
	if a := c.lockedBy(resource{"volume", v.ID}); a != nil {
		return 0, nil, lockedError("volume", a)
	}
	if a := c.lockedBy(resource{"server", s.ID}); a != nil {
		return 0, nil, lockedError("server", a)
	}
	switch {
	case v.Server != nil:
		return 0, nil, &apiError{status: http.StatusConflict, code: "volume_already_attached",
			message: fmt.Sprintf("volume is already attached to server %d, detach first", *v.Server)}
	case s.Location.Name != v.Location.Name:
		return 0, nil, invalidInput("server", fmt.Sprintf("server is in %s, the volume in %s", s.Location.Name, v.Location.Name))
	case len(s.Volumes) >= MaxVolumesPerServer:
		return 0, nil, attachLimit(s)
	}
	a := c.startAction("attach_volume", []resource{{"volume", v.ID}, {"server", s.ID}}, c.attachEffect(v, s))
	return http.StatusCreated, schema.VolumeActionAttachVolumeResponse{Action: a.Action}, nil
}

func (c *Cloud) attachEffect(v *volume, s *server) effect {
	vid, dir := v.ID, s.deviceDir
	return func() (func(), *schema.ActionError) {
		dev, err := c.plug(vid, dir)
		if err != nil {
			return nil, &schema.ActionError{Code: "action_failed", Message: "volume not attached: " + err.Error()}
		}
		return func() {
			id := s.ID
			v.Server = &id
			v.device = dev
			s.Volumes = append(s.Volumes, v.ID)
		}, nil
	}
}

func (c *Cloud) detachVolume(r *http.Request) (int, any, *apiError) {
	var req schema.VolumeActionDetachVolumeRequest
	if apiErr := decode(r, &req); apiErr != nil {
		return 0, nil, apiErr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, apiErr := c.volumeFor(r)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	if a := c.lockedBy(resource{"volume", v.ID}); a != nil {
		return 0, nil, lockedError("volume", a)
	}
	if v.Server == nil {
		return 0, nil, &apiError{status: http.StatusUnprocessableEntity, code: "invalid_input", message: "volume is not attached to a server"}
	}
	s := c.servers[*v.Server]
	if a := c.lockedBy(resource{"server", s.ID}); a != nil {
		return 0, nil, lockedError("server", a)
	}
	vid, dev, dir := v.ID, v.device, s.deviceDir
	a := c.startAction("detach_volume", []resource{{"volume", v.ID}, {"server", s.ID}}, func() (func(), *schema.ActionError) {
		if err := c.unplugDevice(vid, dev, dir); err != nil {
			return nil, &schema.ActionError{Code: "action_failed", Message: "volume not detached: " + err.Error()}
		}
		return func() {
			v.Server = nil
			v.device = ""
			s.Volumes = slices.DeleteFunc(s.Volumes, func(id int64) bool { return id == v.ID })
		}, nil
	})
	return http.StatusCreated, schema.VolumeActionDetachVolumeResponse{Action: a.Action}, nil
}

func (c *Cloud) resizeVolume(r *http.Request) (int, any, *apiError) {
	var req schema.VolumeActionResizeVolumeRequest
	if apiErr := decode(r, &req); apiErr != nil {
		return 0, nil, apiErr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, apiErr := c.volumeFor(r)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	if a := c.lockedBy(resource{"volume", v.ID}); a != nil {
		return 0, nil, lockedError("volume", a)
	}
	switch {
	case req.Size <= v.Size:
		return 0, nil, invalidInput("size", fmt.Sprintf("must be larger than the current size, %d GB", v.Size))
	case req.Size > MaxVolumeGiB:
		return 0, nil, invalidInput("size", fmt.Sprintf("must be at most %d GB", MaxVolumeGiB))
	}
	size, vid, dev := req.Size, v.ID, v.device
	a := c.startAction("resize_volume", []resource{{"volume", v.ID}}, func() (func(), *schema.ActionError) {
		if err := c.growImage(vid, int64(size)*backend.GiB, dev); err != nil {
			return nil, &schema.ActionError{Code: "action_failed", Message: "volume not resized: " + err.Error()}
		}
		return func() { v.Size = size }, nil
	})
	return http.StatusCreated, schema.VolumeActionResizeVolumeResponse{Action: a.Action}, nil
}

func (c *Cloud) changeProtection(r *http.Request) (int, any, *apiError) {
	var req schema.VolumeActionChangeProtectionRequest
	if apiErr := decode(r, &req); apiErr != nil {
		return 0, nil, apiErr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, apiErr := c.volumeFor(r)
	if apiErr != nil {
		return 0, nil, apiErr
	}
	if a := c.lockedBy(resource{"volume", v.ID}); a != nil {
		return 0, nil, lockedError("volume", a)
	}
	a := c.startAction("change_protection", []resource{{"volume", v.ID}}, func() (func(), *schema.ActionError) {
		return func() {
			if req.Delete != nil {
				v.Protection.Delete = *req.Delete
			}
		}, nil
	})
	return http.StatusCreated, schema.VolumeActionChangeProtectionResponse{Action: a.Action}, nil
}

// AddVolumes adds n available, unattached volumes in a location with the
// given labels, without actions or images: a project's other volumes,
// which only listings see. It returns their ids.
func (c *Cloud) AddVolumes(n int, location string, labels map[string]string) ([]int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	loc, ok := c.location(location)
	if !ok {
		return nil, fmt.Errorf("fakecloud: no location %q", location)
	}
	if apiErr := checkLabels(labels); apiErr != nil {
		return nil, apiErr
	}
	ids := make([]int64, 0, n)
	for range n {
		id := c.nextID("volume")
		c.volumes[id] = &volume{Volume: schema.Volume{
			ID: id, Name: "other-" + strconv.FormatInt(id, 10), Status: "available", Location: loc, Size: MinVolumeGiB,
			Labels: maps.Clone(labels), LinuxDevice: "/dev/disk/by-id/" + DevicePrefix + strconv.FormatInt(id, 10),
			Created: time.Now().UTC().Truncate(time.Second),
		}}
		ids = append(ids, id)
	}
	return ids, nil
}

// RemoveVolumes removes volumes that AddVolumes added, at once.
func (c *Cloud) RemoveVolumes(ids []int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		if v, ok := c.volumes[id]; ok && v.Server == nil {
			delete(c.volumes, id)
		}
	}
}
