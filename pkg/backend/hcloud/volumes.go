package hcloud

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// CreateVolume implements backend.Controller. It creates first: the
// volume's Hetzner name is unique in the project, so a retry, or another
// call for the same name, is answered "taken" and finds the volume by the
// hash of its CSI name; if the first attempt's creation is still running,
// the retry waits for it.
func (b *Backend) CreateVolume(ctx context.Context, spec backend.VolumeSpec) (*backend.Volume, error) {
	switch {
	case len(spec.Parameters) > 0:
		return nil, csierr.Invalid("the hcloud backend takes no parameters besides fsType, mkfsOptions, uid, gid and mode")
	case len(spec.MutableParameters) > 0:
		return nil, csierr.Invalid("the hcloud backend has no mutable parameters")
	case spec.CapacityBytes > MaxSize:
		return nil, fmt.Errorf("%w: %d bytes asked for; the largest Hetzner Cloud volume is %d GiB", csierr.ErrOutOfRange, spec.CapacityBytes, MaxSize/backend.GiB)
	}
	labels, err := b.labelsFor(spec)
	if err != nil {
		return nil, err
	}
	size := int(max(spec.CapacityBytes, MinSize) / backend.GiB)
	if int64(size)*backend.GiB < spec.CapacityBytes {
		size++ // whole GiB, rounded up
	}
	o, err := b.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer o.done()
	what := fmt.Sprintf("creating volume %q", spec.Name)

	var hv *hcloud.Volume
	var actions []*hcloud.Action
	res, _, err := o.api.Volume.Create(o.ctx, hcloud.VolumeCreateOpts{
		Name:     b.volumeName(spec.Name),
		Size:     size,
		Location: &hcloud.Location{Name: b.cfg.Location},
		Labels:   labels,
	})
	switch {
	case hcloud.IsError(err, hcloud.ErrorCodeUniquenessError):
		// An earlier attempt created it and lost its answer, or another
		// call did meanwhile, or it exists already.
		if hv, err = o.findByName(spec.Name); err == nil && hv == nil {
			err = fmt.Errorf("%w: the Hetzner Cloud volume name %s is taken by a volume that is not this cluster's", csierr.ErrAlreadyExists, b.volumeName(spec.Name))
		}
	case err == nil:
		hv = res.Volume
		actions = append([]*hcloud.Action{res.Action}, res.NextActions...)
	}
	if err != nil {
		return nil, o.fail(err, what)
	}
	if hv.Status == hcloud.VolumeStatusCreating && len(actions) > 0 {
		err = o.await(actions...)
		var ae hcloud.ActionError
		if errors.As(err, &ae) {
			// A failed creation leaves nothing usable: remove what is
			// left of it, so that a retry starts afresh.
			_, _ = o.api.Volume.Delete(o.ctx, hv)
		}
		if err != nil {
			return nil, o.fail(err, what)
		}
		hv.Status = hcloud.VolumeStatusAvailable
	}
	// A volume an earlier attempt created may still be in the making:
	// wait for its creation, then read it again.
	for hv.Status == hcloud.VolumeStatusCreating && len(actions) == 0 {
		if err := o.waitActions(hv.ID, 0); err != nil {
			return nil, o.fail(err, what)
		}
		if hv, err = o.volume(hv.ID); err != nil {
			if csierr.Code(err) == csierr.Code(csierr.ErrNotFound) {
				// Its creation failed and left nothing: the retry creates it.
				return nil, fmt.Errorf("%w: %s: an earlier attempt's creation failed in Hetzner Cloud; a retry creates the volume again", csierr.ErrAborted, what)
			}
			return nil, o.fail(err, what)
		}
	}
	v, err := toVolume(hv)
	if err != nil {
		return nil, err
	}
	o.own(hv.ID, true)
	o.saw(hv, true)
	v.Name = spec.Name
	return v, nil
}

// findByName returns this cluster's volume with a CSI name, or nil.
func (o *op) findByName(name string) (*hcloud.Volume, error) {
	vols, _, err := o.api.Volume.List(o.ctx, hcloud.VolumeListOpts{ListOpts: hcloud.ListOpts{
		LabelSelector: o.b.clusterSelector() + "," + LabelName + "=" + nameHash(name),
	}})
	if err != nil || len(vols) == 0 {
		return nil, err
	}
	// The name's uniqueness in the project allows one; the lowest id
	// would be the first.
	slices.SortFunc(vols, func(a, b *hcloud.Volume) int { return cmp.Compare(a.ID, b.ID) })
	return vols[0], nil
}

// volume returns this cluster's volume with an id, or a NotFound error.
func (o *op) volume(id int64) (*hcloud.Volume, error) {
	hv, _, err := o.api.Volume.GetByID(o.ctx, id)
	if err != nil {
		return nil, err
	}
	if !o.b.ours(hv) {
		o.own(id, false)
		o.gone(id)
		return nil, csierr.NotFound("volume %d does not exist in Hetzner Cloud, or not for cluster %q", id, o.b.cfg.Cluster)
	}
	o.own(id, true)
	o.saw(hv, false)
	return hv, nil
}

// runningActions lists the actions running on a volume.
func (o *op) runningActions(id int64) ([]*hcloud.Action, error) {
	return o.api.Volume.Action.AllFor(o.ctx, &hcloud.Volume{ID: id}, hcloud.ActionListOpts{
		Status: []hcloud.ActionStatus{hcloud.ActionStatusRunning}})
}

// waitActions waits until no action runs on a volume, whatever their
// outcome: the caller reads the volume again afterwards. With none on the
// volume itself, the lock is the server's (another volume's attach or
// detach): then it waits for the server's actions, if server is set, or
// a moment.
func (o *op) waitActions(id, server int64) error {
	running, err := o.runningActions(id)
	if err == nil && len(running) == 0 && server > 0 {
		running, err = o.api.Server.Action.AllFor(o.ctx, &hcloud.Server{ID: server}, hcloud.ActionListOpts{
			Status: []hcloud.ActionStatus{hcloud.ActionStatusRunning}})
	}
	if err != nil {
		return err
	}
	if len(running) == 0 {
		select {
		case <-o.ctx.Done():
			return o.ctx.Err()
		case <-time.After(250 * time.Millisecond):
			return nil
		}
	}
	return o.watch(running, false, false)
}

// DeleteVolume implements backend.Controller: it detaches the volume if
// needed, then deletes it. Unknown ids and other clusters' volumes are
// left alone: a volume not known to be this cluster's is looked up
// first, one known is deleted at once (the API refuses while it is
// attached, and then it is looked up and detached).
func (b *Backend) DeleteVolume(ctx context.Context, id string) error {
	vid, ok := parseID(id)
	if !ok {
		return nil
	}
	o, err := b.begin(ctx)
	if err != nil {
		return err
	}
	defer o.done()
	what := fmt.Sprintf("deleting volume %d", vid)
	for look := !o.owns(vid); ; look = true {
		if look {
			hv, err := o.volume(vid)
			if csierr.Code(err) == csierr.Code(csierr.ErrNotFound) {
				return nil
			}
			if err != nil {
				return o.fail(err, what)
			}
			if hv.Server != nil {
				if _, err := o.detach(hv); err != nil {
					return o.fail(err, what)
				}
				continue
			}
		}
		_, err = o.api.Volume.Delete(o.ctx, &hcloud.Volume{ID: vid})
		switch {
		case err == nil, hcloud.IsError(err, hcloud.ErrorCodeNotFound):
			o.own(vid, false)
			o.gone(vid)
			return nil
		case hcloud.IsError(err, hcloud.ErrorCodeLocked):
			err = o.waitActions(vid, 0)
		case hcloud.IsError(err, hcloud.ErrorCodeVolumeAlreadyAttached):
			err = nil // attached: look it up and detach it
		case hcloud.IsError(err, hcloud.ErrorCodeProtected):
			return fmt.Errorf("%w: volume %d has delete protection in Hetzner Cloud; disable it (hcloud volume disable-protection %d delete) and retry",
				csierr.ErrFailedPrecondition, vid, vid)
		case !look && hcloud.IsError(err, hcloud.ErrorCodeServiceError):
			// The API has also answered the delete of an attached volume
			// with service_error: look it up (and detach it) before
			// giving up.
			err = nil
		}
		if err != nil {
			return o.fail(err, what)
		}
	}
}

// Volume implements backend.Controller: the volume as the API has it.
func (b *Backend) Volume(ctx context.Context, id string) (*backend.Volume, error) {
	return b.volumeOf(ctx, id, false)
}

// VolumeForPublish implements backend.PublishReader. A volume this
// process has created or detached within idleFor, and not handed out
// since, is answered once without asking the API: the attach that
// follows checks it (see Publish). Every other answer is read from the
// API. Publish is handed what was answered, read or not.
func (b *Backend) VolumeForPublish(ctx context.Context, id string) (*backend.Volume, error) {
	return b.volumeOf(ctx, id, true)
}

func (b *Backend) volumeOf(ctx context.Context, id string, forPublish bool) (*backend.Volume, error) {
	vid, ok := parseID(id)
	if !ok {
		return nil, csierr.NotFound("volume %q is not a Hetzner Cloud volume id", id)
	}
	o, err := b.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer o.done()
	var h handed
	if forPublish {
		h = handed{hv: o.takeIdle(vid), fromMemory: true}
	}
	if h.hv == nil {
		if h.hv, err = o.volume(vid); err != nil {
			return nil, o.fail(err, fmt.Sprintf("looking up volume %d", vid))
		}
		h.fromMemory = false
	}
	v, err := toVolume(h.hv)
	if err == nil && forPublish {
		b.remember(v, h)
	}
	return v, err
}

// ListVolumes implements backend.Controller: this cluster's volumes, as
// the last listing and this process's own changes since have them (see
// view). A volume whose labels were changed beyond reading is left out.
func (b *Backend) ListVolumes(ctx context.Context) ([]*backend.Volume, error) {
	o, err := b.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer o.done()
	hvs, err := o.listing()
	if err != nil {
		return nil, o.fail(err, "listing volumes")
	}
	var out []*backend.Volume
	for _, hv := range hvs {
		if !b.ours(hv) {
			continue
		}
		if v, err := toVolume(hv); err == nil {
			out = append(out, v)
		}
	}
	slices.SortFunc(out, func(x, y *backend.Volume) int { return strings.Compare(x.ID, y.ID) })
	return out, nil
}

// ExpandVolume implements backend.Expander: the volume grows to whole
// GiB, attached or not; the server sees the new size at once.
func (b *Backend) ExpandVolume(ctx context.Context, id string, size int64) (int64, error) {
	vid, ok := parseID(id)
	if !ok {
		return 0, csierr.NotFound("volume %q is not a Hetzner Cloud volume id", id)
	}
	if size > MaxSize {
		return 0, fmt.Errorf("%w: %d bytes asked for; the largest Hetzner Cloud volume is %d GiB", csierr.ErrOutOfRange, size, MaxSize/backend.GiB)
	}
	gib := int((size + backend.GiB - 1) / backend.GiB)
	o, err := b.begin(ctx)
	if err != nil {
		return 0, err
	}
	defer o.done()
	what := fmt.Sprintf("resizing volume %d to %d GiB", vid, gib)
	for {
		hv, err := o.volume(vid)
		if err != nil {
			return 0, o.fail(err, what)
		}
		if hv.Size >= gib {
			return int64(hv.Size) * backend.GiB, nil
		}
		action, _, err := o.api.Volume.Resize(o.ctx, hv, gib)
		if err == nil {
			if err := o.await(action); err != nil {
				return 0, o.fail(err, what)
			}
			hv.Size = gib
			o.saw(hv, false)
			return int64(gib) * backend.GiB, nil
		}
		if !hcloud.IsError(err, hcloud.ErrorCodeLocked) {
			return 0, o.fail(err, what)
		}
		if err := o.waitActions(vid, 0); err != nil {
			return 0, o.fail(err, what)
		}
	}
}

// NodeKnown implements backend.Controller: a node id is a server id, and
// the server must exist. Servers found once are remembered.
func (b *Backend) NodeKnown(ctx context.Context, nodeID string) (bool, error) {
	sid, ok := parseID(nodeID)
	if !ok {
		return false, nil
	}
	o, err := b.begin(ctx)
	if err != nil {
		return false, err
	}
	defer o.done()
	key := serverKey{o.token, sid}
	b.mu.Lock()
	known := b.servers[key]
	b.mu.Unlock()
	if known {
		return true, nil
	}
	s, _, err := o.api.Server.GetByID(o.ctx, sid)
	if err != nil {
		return false, o.fail(err, fmt.Sprintf("looking up server %d", sid))
	}
	if s == nil {
		return false, nil
	}
	b.mu.Lock()
	b.servers[key] = true
	b.mu.Unlock()
	return true, nil
}

// NodeAttachments implements backend.AttachmentCounter: the server lists
// the volumes attached to it, so one read counts them however many
// volumes the project has. It also makes the server known.
func (b *Backend) NodeAttachments(ctx context.Context, nodeID string) (int64, error) {
	sid, ok := parseID(nodeID)
	if !ok {
		return 0, csierr.NotFound("node %q is not a Hetzner Cloud server id", nodeID)
	}
	o, err := b.begin(ctx)
	if err != nil {
		return 0, err
	}
	defer o.done()
	s, _, err := o.api.Server.GetByID(o.ctx, sid)
	if err != nil {
		return 0, o.fail(err, fmt.Sprintf("counting the volumes of server %d", sid))
	}
	if s == nil {
		return 0, csierr.NotFound("server %d does not exist in Hetzner Cloud", sid)
	}
	b.mu.Lock()
	b.servers[serverKey{o.token, sid}] = true
	b.mu.Unlock()
	return int64(len(s.Volumes)), nil
}

// Condition implements backend.Controller: a volume is abnormal while it
// is not available. An unreachable API says nothing about the volume.
func (b *Backend) Condition(ctx context.Context, v *backend.Volume) backend.Condition {
	vid, ok := parseID(v.ID)
	if !ok {
		return backend.Condition{Abnormal: true, Message: "not a Hetzner Cloud volume id"}
	}
	o, err := b.begin(ctx)
	if err != nil {
		return backend.Condition{Message: "health unknown: " + err.Error()}
	}
	defer o.done()
	hv, err := o.volume(vid)
	switch {
	case csierr.Code(err) == csierr.Code(csierr.ErrNotFound):
		return backend.Condition{Abnormal: true, Message: "the volume is gone from Hetzner Cloud"}
	case err != nil:
		return backend.Condition{Message: "health unknown: " + o.fail(err, "looking up the volume").Error()}
	case hv.Status != hcloud.VolumeStatusAvailable:
		return backend.Condition{Abnormal: true, Message: fmt.Sprintf("the volume's status is %q", hv.Status)}
	}
	return backend.Condition{Message: "available in Hetzner Cloud"}
}
