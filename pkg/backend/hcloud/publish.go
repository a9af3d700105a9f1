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
// A retry after Aborted finds the attach still running (the API answers
// "locked") and waits for that one instead of starting another. The
// volume is as the controller has just read it (Volume), so there is no
// read before the attach: the API refuses an attach to a volume attached
// meanwhile, and then Publish looks again. The publish context carries
// what the node needs to know of the volume (see publishContext).
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
	hv := b.recall(v)
	for attempt := 0; ; attempt, hv = attempt+1, nil {
		if hv == nil {
			if hv, err = o.volume(vid); err != nil {
				return nil, o.fail(err, what)
			}
		}
		if hv.Server != nil && hv.Server.ID != sid {
			return nil, csierr.Precondition("volume %d is attached to server %d; it can move once that server has let go of it", vid, hv.Server.ID)
		}
		// Read-only is the mount's business (Hetzner attaches read-write);
		// the label remembers it so that a retry compares alike.
		if err := o.setReadOnly(hv, a.ReadOnly); err != nil {
			return nil, o.fail(err, what)
		}
		if hv.Server != nil {
			return publishContext(hv), nil
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
			return publishContext(hv), nil
		}
		unlock()
		switch {
		case hcloud.IsError(err, hcloud.ErrorCodeLocked):
			// Our own attach from an earlier attempt, another action on
			// the volume, or one on the server: wait, then look again.
			err = o.waitActions(vid, sid)
		case hcloud.IsError(err, hcloud.ErrorCodeVolumeAlreadyAttached):
			err = o.pause(attempt) // attached meanwhile: look again
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
// and reports false: the caller reads the volume again.
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
		return true, nil
	case hcloud.IsError(err, hcloud.ErrorCodeLocked):
		return false, o.waitActions(hv.ID, hv.Server.ID)
	case hcloud.IsError(err, hcloud.ErrorCodeInvalidInput):
		return false, o.pause(0) // not attached any more
	}
	return false, err
}
