package hcloud

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// Publish implements backend.Controller: it attaches the volume to the
// server named by the node id and waits for the attach within the budget.
// The publish context carries what the node needs to know of the volume
// (see publishContext).
//
// There is no read before the attach. The volume is as the controller has
// just seen it (VolumeForPublish): read from the API, or, after this
// process created or detached it, from memory, which may be stale if
// something outside this process attached it since. (A volume that did
// not come from VolumeForPublish is read first.) Either way the attach
// cannot take the volume from anywhere: Hetzner refuses to attach a volume
// that is attached (volume_already_attached, whichever server has it),
// and only then does Publish read it: attached to this server is success (a
// retry, or the answer of an earlier attach lost in a crash), attached
// elsewhere FailedPrecondition. A volume gone is NotFound, and one locked
// by an action (an earlier attempt's attach still running) is waited for
// and read again, so a retry never starts a second attach. The per-node
// limit is the controller's (it counts from the server) or Hetzner's own
// (the attach is refused: ResourceExhausted).
func (b *Backend) Publish(ctx context.Context, v *backend.Volume, a backend.Attachment) (map[string]string, error) {
	id := v.ID
	vid, ok := parseID(id)
	if !ok {
		return nil, csierr.NotFound("volume %q is not a Hetzner Cloud volume id", id)
	}
	sid, ok := parseID(a.NodeID)
	if !ok {
		return nil, csierr.NotFound("node %q is not a Hetzner Cloud server id", a.NodeID)
	}
	o, err := b.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer o.done()
	what := fmt.Sprintf("attaching volume %d to server %d", vid, sid)
	h := b.recall(v)
	hv := h.hv
	if h.fromMemory && (hv.Labels[labelReadOnly] == "true") != a.ReadOnly {
		// The readonly label describes the attachment: before changing it,
		// make sure the volume is not attached after all.
		hv = nil
	}
	for attempt := 0; ; attempt, hv = attempt+1, nil {
		if hv == nil {
			if hv, err = o.volume(vid); err != nil {
				return nil, o.fail(err, what)
			}
		}
		if hv.Server != nil {
			switch {
			case hv.Server.ID != sid:
				return nil, csierr.Precondition("volume %d is attached to server %d; it can move once that server has let go of it", vid, hv.Server.ID)
			case (hv.Labels[labelReadOnly] == "true") != a.ReadOnly:
				return nil, fmt.Errorf("%w: volume %d is published to server %d with readonly=%t", csierr.ErrAlreadyExists, vid, sid, !a.ReadOnly)
			}
			return publishContext(hv), nil
		}
		// Read-only is the mount's business (Hetzner attaches read-write);
		// the label remembers it so that a retry compares alike.
		if err := o.setReadOnly(hv, a.ReadOnly); err != nil {
			return nil, o.fail(err, what)
		}
		unlock, err := o.lockServer(sid)
		if err != nil {
			return nil, o.fail(err, what)
		}
		action, _, err := o.api.Volume.AttachWithOpts(o.ctx, hv, hcloud.VolumeAttachOpts{
			Server: &hcloud.Server{ID: sid}, Automount: hcloud.Ptr(false)})
		if err == nil {
			err = o.await(action)
			unlock()
			if err != nil {
				return nil, o.fail(err, what)
			}
			hv.Server = &hcloud.Server{ID: sid}
			o.saw(hv, false)
			return publishContext(hv), nil
		}
		unlock()
		switch {
		case hcloud.IsError(err, hcloud.ErrorCodeLocked):
			// Our own attach from an earlier attempt, another action on
			// the volume, or one on the server: wait, then look again.
			err = o.waitActions(vid, sid)
		case hcloud.IsError(err, hcloud.ErrorCodeVolumeAlreadyAttached):
			// Attached before this call (the controller's view was from
			// memory, or a retry): look at once. Attached meanwhile:
			// look again after a pause.
			if attempt > 0 {
				err = o.pause(attempt)
			} else {
				err = nil
			}
		case hcloud.IsError(err, hcloud.ErrorCodeNotFound):
			o.own(vid, false)
			o.gone(vid)
			return nil, csierr.NotFound("volume %d does not exist in Hetzner Cloud", vid)
		case hcloud.IsError(err, errorCodeAttachLimit, hcloud.ErrorCodeResourceLimitExceeded):
			return nil, fmt.Errorf("%w: server %d has the %d volumes a Hetzner Cloud server takes", csierr.ErrResourceExhausted, sid, MaxVolumesPerServer)
		case hcloud.IsError(err, hcloud.ErrorCodeInvalidInput) && attempt == 0:
			// The API answers invalid_input for a server that does not
			// exist; say so if that is why.
			if s, _, gerr := o.api.Server.GetByID(o.ctx, sid); gerr == nil && s == nil {
				return nil, csierr.NotFound("server %d does not exist in Hetzner Cloud", sid)
			}
		}
		if err != nil {
			return nil, o.fail(err, what)
		}
	}
}

// Keys of the publish context besides the volume's labels.
const (
	pcVolume  = "hcloudVolume"
	pcSizeGiB = "hcloudSizeGiB"
)

// publishContext is what the node needs to know of a volume, so that
// staging and publishing it ask the API nothing: its id and size, and its
// labels (filesystem, access mode, mkfsOptions). Swarm may lose it after
// a leader change (SwarmKit #3276): the node then reads the volume.
func publishContext(hv *hcloud.Volume) map[string]string {
	pc := map[string]string{pcVolume: strconv.FormatInt(hv.ID, 10), pcSizeGiB: strconv.Itoa(hv.Size)}
	for k, v := range hv.Labels {
		if strings.HasPrefix(k, labelPrefix) && k != labelReadOnly {
			pc[k] = v
		}
	}
	return pc
}

// setReadOnly records whether the volume is published read-only.
func (o *op) setReadOnly(hv *hcloud.Volume, readOnly bool) error {
	if (hv.Labels[labelReadOnly] == "true") == readOnly {
		return nil
	}
	labels := maps.Clone(hv.Labels)
	delete(labels, labelReadOnly)
	if readOnly {
		labels[labelReadOnly] = "true"
	}
	updated, _, err := o.api.Volume.Update(o.ctx, hv, hcloud.VolumeUpdateOpts{Labels: labels})
	if err != nil {
		return err
	}
	hv.Labels = updated.Labels
	o.saw(updated, false)
	return nil
}

// pause waits a little longer at each attempt, within the budget.
func (o *op) pause(attempt int) error {
	select {
	case <-o.ctx.Done():
		return o.ctx.Err()
	case <-time.After(time.Duration(min(attempt+1, 10)) * 100 * time.Millisecond):
		return nil
	}
}

// Unpublish implements backend.Controller: it detaches the volume from the
// server, if attached there. An attach to that server still running (a
// publish the caller gave up on) is waited for and undone, or it would
// attach the volume after this call answered.
func (b *Backend) Unpublish(ctx context.Context, id, nodeID string) error {
	vid, ok := parseID(id)
	if !ok {
		return nil
	}
	sid, ok := parseID(nodeID)
	if !ok {
		return nil
	}
	o, err := b.begin(ctx)
	if err != nil {
		return err
	}
	defer o.done()
	what := fmt.Sprintf("detaching volume %d from server %d", vid, sid)
	for {
		// Always read first, never from memory: Hetzner's detach names no
		// server, it takes the volume from wherever it is. Only a fresh
		// read tells that it is on the server Swarm names, so that a
		// retried or stale unpublish never takes it from another server
		// where a task now uses it.
		hv, err := o.volume(vid)
		if csierr.Code(err) == csierr.Code(csierr.ErrNotFound) {
			return nil
		}
		if err != nil {
			return o.fail(err, what)
		}
		if hv.Server != nil && hv.Server.ID == sid {
			detached, err := o.detach(hv)
			if detached || err != nil {
				return o.fail(err, what)
			}
			continue
		}
		running, err := o.runningActions(vid)
		if err != nil {
			return o.fail(err, what)
		}
		attaching := slices.ContainsFunc(running, func(a *hcloud.Action) bool {
			return a.Command == "attach_volume" && slices.ContainsFunc(a.Resources, func(r *hcloud.ActionResource) bool {
				return r.Type == hcloud.ActionResourceTypeServer && r.ID == sid
			})
		})
		if !attaching {
			return nil
		}
		if err := o.api.Action.WaitForFunc(o.ctx, nil, running...); err != nil {
			return o.fail(err, what)
		}
	}
}

// detach detaches a volume from its server and waits for it, reporting
// whether it did. When the volume or its server is locked by another
// action, or the volume was found detached meanwhile, it waits for that
// and reports false: the caller reads the volume again. A volume this
// call detached is idle (see view): the publish that moves it to another
// server is spared a read.
func (o *op) detach(hv *hcloud.Volume) (bool, error) {
	unlock, err := o.lockServer(hv.Server.ID)
	if err != nil {
		return false, err
	}
	action, _, err := o.api.Volume.Detach(o.ctx, hv)
	if err == nil {
		err = o.await(action)
	}
	unlock()
	switch {
	case err == nil:
		hv.Server = nil
		o.saw(hv, true)
		return true, nil
	case hcloud.IsError(err, hcloud.ErrorCodeLocked):
		return false, o.waitActions(hv.ID, hv.Server.ID)
	case hcloud.IsError(err, hcloud.ErrorCodeInvalidInput):
		return false, o.pause(0) // not attached any more
	}
	return false, err
}
