package ops

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/volume"

	"github.com/swarm-csi/swarm-csi/pkg/stackvol"
)

// volume release: a volume Swarm counts as published to nodes that will
// never unpublish it stays "in use" for ever (docker volume rm refuses
// it): a node removed from the swarm (Swarm forgets the node, not the
// publication), a node whose host joined the swarm again as a new node, a
// live node whose plugin holds nothing of it. Swarm's API cannot drop one
// node's publication; what it allows is docker volume rm --force, which
// forgets the volume without calling the plugin, and creating it again
// under the same name, which the driver answers with the same volume
// (CreateVolume is idempotent by name). release does that once the plugin
// of every host Swarm counts the volume published to, or the backend has
// it attached to, has said that it holds nothing of it (a node removed
// from the swarm, and a host no node of the swarm is any more, are taken
// as gone), and after the controller has let go of it for those hosts;
// anything else it refuses, with the reason and the steps left to the
// operator.

// recreateTimeout bounds the wait for Swarm to create the volume again.
var recreateTimeout = 60 * time.Second

func (o *op) volumeRelease(ctx context.Context, name string) error {
	v, id, err := o.swarmVolume(ctx, name)
	if err != nil {
		return err
	}
	pubs := v.ClusterVolume.PublishStatus
	if len(pubs) == 0 {
		fmt.Fprintf(o.out, "volume %s is not published anywhere: nothing to release (docker volume rm %s removes it)\n", name, name)
		return nil
	}
	nodes, err := o.engine.Nodes(ctx)
	if err != nil {
		return err
	}
	cur, err := o.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
	if err != nil {
		return fmt.Errorf("volume %s (%s): %w", name, id, err)
	}
	if users := o.servicesUsing(ctx, v); len(users) > 0 {
		return o.releaseRemoved(ctx, name, id, users, pubs, nodes, cur.GetStatus().GetPublishedNodeIds())
	}
	r := releaser{op: o, name: name, v: v, nodes: nodes, held: o.newHolders(ctx), letGo: map[string]bool{}}
	// Every host that may have the volume: the nodes Swarm counts it
	// published to...
	for _, p := range pubs {
		published, ok := nodeByID(nodes, p.NodeID)
		if !ok {
			// Removed from the swarm: Swarm never unpublishes from it (it
			// waits for that node for ever); its host is below.
			fmt.Fprintf(o.out, "node %s: not in the swarm any more (docker node rm): taken as gone\n", p.NodeID)
			continue
		}
		if err := r.ask(ctx, published); err != nil {
			return err
		}
	}
	// ...and the hosts the controller has it attached to.
	attached := cur.GetStatus().GetPublishedNodeIds()
	for _, c := range attached {
		if r.letGo[c] {
			continue
		}
		n, ok := nodeWithCSI(nodes, o.plugin, c)
		if !ok {
			if h, ok := nodeByHostname(nodes, c); ok {
				return fmt.Errorf("refused: volume %s is attached to %s, and node %s (%s) reports no CSI node id for the plugin, so it cannot be told apart: restart that node's Engine (the plugin was installed after it joined)",
					name, c, h.Description.Hostname, h.ID)
			}
			fmt.Fprintf(o.out, "host %s (the plugin's node id): no node of the swarm is that host any more: taken as gone\n", c)
			continue
		}
		if err := r.ask(ctx, n); err != nil {
			return err
		}
	}
	for _, c := range attached {
		if _, err := o.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: c}); err != nil {
			return fmt.Errorf("the plugin's ControllerUnpublishVolume of %s from %s: %w (nothing in Swarm changed)", id, c, err)
		}
	}
	return o.recreate(ctx, v, id)
}

// releaseRemoved is release while a service still mounts the volume. Its
// task waits for Swarm to publish the volume on a new node, which the
// controller refuses for a single-writer volume while it is attached to a
// node removed from the swarm (Swarm never unpublishes from one, and the
// removed node's Engine may be gone while its attach process still
// writes). The controller lets go of the hosts no node of the swarm is
// any more; the next publish fences the clients they left (rbd), and Swarm
// publishes the volume to the task's node by itself. Nothing else is
// touched: a node still in the swarm is Swarm's to unpublish.
func (o *op) releaseRemoved(ctx context.Context, name, id string, users []string, pubs []*volume.PublishStatus, nodes []swarm.Node, attached []string) error {
	for _, p := range pubs {
		n, ok := nodeByID(nodes, p.NodeID)
		if !ok {
			fmt.Fprintf(o.out, "node %s: not in the swarm any more (docker node rm): taken as gone\n", p.NodeID)
			continue
		}
		if n.Status.State != swarm.NodeStateReady {
			return fmt.Errorf("refused: volume %s is published to %s (%s), which is %s, and service %s waits for it. If %s comes back, Swarm unpublishes the volume by itself. "+
				"If it is gone for good (powered off, never to return): docker node rm --force %s, then swarm-csi volume release %s again",
				name, n.Description.Hostname, n.ID, n.Status.State, strings.Join(users, ", "), n.Description.Hostname, n.ID, name)
		}
	}
	var gone []string
	for _, c := range attached {
		if _, ok := nodeWithCSI(nodes, o.plugin, c); ok {
			continue
		}
		if _, ok := nodeByHostname(nodes, c); ok {
			continue // a node without its CSI node id is not taken as gone
		}
		gone = append(gone, c)
	}
	if len(gone) == 0 {
		return fmt.Errorf("refused: service %s still mounts volume %s; remove it (docker service rm %s) or scale it to 0, and Swarm unpublishes the volume by itself",
			strings.Join(users, ", "), name, strings.Join(users, " "))
	}
	for _, c := range gone {
		if _, err := o.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: c}); err != nil {
			return fmt.Errorf("the plugin's ControllerUnpublishVolume of %s from %s: %w", id, c, err)
		}
		fmt.Fprintf(o.out, "released %s from %s, which no node of the swarm is any more\n", name, c)
	}
	fmt.Fprintf(o.out, "service %s still mounts volume %s: Swarm publishes it to its task's node by itself\n", strings.Join(users, ", "), name)
	return nil
}

// releaser is volume release under way.
type releaser struct {
	*op
	name  string
	v     *volume.Volume
	nodes []swarm.Node
	held  *holders
	letGo map[string]bool // the plugin node ids of the hosts that hold nothing of it
}

// ask refuses, with the reason and what is left to do, unless the plugin
// of node n's host says that it holds nothing of the volume.
func (r *releaser) ask(ctx context.Context, published swarm.Node) error {
	host := published.Description.Hostname
	n, ok := answering(published, r.nodes, r.plugin)
	if !ok {
		return fmt.Errorf("refused: volume %s is published to %s (%s), which is %s, so its plugin cannot be asked whether a container there still writes to it. "+
			"If %s comes back, Swarm unpublishes the volume by itself. If it is gone for good (powered off, never to return): "+
			"docker node rm --force %s, then swarm-csi volume release %s again", r.name, host, published.ID, published.Status.State, host, published.ID, r.name)
	}
	if n.ID != published.ID {
		fmt.Fprintf(r.out, "node %s (%s) is %s; the same host is in the swarm again as %s\n", host, published.ID, published.Status.State, n.ID)
	}
	has, how, err := r.held.holds(ctx, n, r.v)
	if err != nil {
		return fmt.Errorf("refused: cannot tell whether %s's plugin holds volume %s: %w", n.Description.Hostname, r.name, err)
	}
	switch {
	case has && n.ID != published.ID:
		return fmt.Errorf("refused: %s's plugin still has volume %s mounted (asked through %s): the host left the swarm with the volume in use "+
			"(docker swarm leave does not unpublish it) and Swarm never asks it to let go; its plugin keeps the mount, and release does not take it away (README, \"When something is stuck\")",
			n.Description.Hostname, r.name, how)
	case has:
		return fmt.Errorf("refused: %s's plugin has volume %s mounted (asked through %s): a container there may use it; "+
			"on %s: docker ps --filter volume=%s, and stop what uses it; Swarm then unpublishes it by itself", n.Description.Hostname, r.name, how, n.Description.Hostname, r.name)
	}
	fmt.Fprintf(r.out, "node %s: its plugin holds nothing of volume %s (asked through %s)\n", n.Description.Hostname, r.name, how)
	r.letGo[csiNodeID(n, r.plugin)] = true
	return nil
}

// nodeWithCSI is the node whose plugin has CSI node id c: a ready one if
// there is one.
func nodeWithCSI(nodes []swarm.Node, plugin, c string) (swarm.Node, bool) {
	var found *swarm.Node
	for i, n := range nodes {
		if csiNodeID(n, plugin) == c && (found == nil || n.Status.State == swarm.NodeStateReady) {
			found = &nodes[i]
		}
	}
	if found == nil {
		return swarm.Node{}, false
	}
	return *found, true
}

// recreate has Swarm forget volume v and create it again under its name,
// which gives back the driver's volume id, with its data.
func (o *op) recreate(ctx context.Context, v *volume.Volume, id string) error {
	spec := v.ClusterVolume.Spec
	// A volume grown beyond its limit (volume expand) must still fit it,
	// or the driver refuses the name's new CreateVolume.
	if r, size := spec.CapacityRange, v.ClusterVolume.Info.CapacityBytes; r != nil && r.LimitBytes > 0 && size > r.LimitBytes {
		grown := *r
		grown.LimitBytes = size
		spec.CapacityRange = &grown
	}
	again := stackvol.Volume{Name: v.Name, Driver: v.Driver, DriverOpts: v.Options, Labels: v.Labels, Spec: spec}
	manual := fmt.Sprintf("docker volume rm --force %s; then %s", v.Name, createCommand(again))
	// Said first: should this stop half-way, the way back is on screen.
	fmt.Fprintf(o.out, "creating volume %s again as: %s\n", v.Name, createCommand(again))
	if err := o.engine.Remove(ctx, v.Name, true); err != nil {
		return fmt.Errorf("docker volume rm --force %s: %w (nothing in Swarm changed; the controller let go of it)", v.Name, err)
	}
	fmt.Fprintf(o.out, "Swarm forgot volume %s (docker volume rm --force); creating it again under its name\n", v.Name)
	if err := o.engine.Create(ctx, again); err != nil {
		return fmt.Errorf("creating %s again: %w; by hand: %s (the driver answers with volume %s, its data intact)", v.Name, err, createCommand(again), id)
	}
	deadline := time.Now().Add(recreateTimeout)
	for {
		nv, err := o.engine.Inspect(ctx, v.Name)
		if err != nil {
			return err
		}
		if got := volumeIDOf(nv); got == id {
			fmt.Fprintf(o.out, "volume %s released: created again as %s, published nowhere; docker volume rm %s or a service can use it now\n", v.Name, id, v.Name)
			return nil
		} else if got != "" {
			return fmt.Errorf("volume %s came back as %s, not %s: the driver made a new volume; %s is still in the backend (swarm-csi volume ls); undo with: %s",
				v.Name, got, id, id, manual)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("volume %s is still pending creation %s after it was created again: swarm-csi doctor shows the driver's error", v.Name, recreateTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func volumeIDOf(v *volume.Volume) string {
	if v == nil {
		return ""
	}
	return volumeID(*v)
}

// servicesUsing lists the services that mount volume v (by name, or by
// its group).
func (o *op) servicesUsing(ctx context.Context, v *volume.Volume) []string {
	svcs, err := o.engine.Services(ctx)
	if err != nil {
		return []string{fmt.Sprintf("(docker service ls failed: %v)", err)}
	}
	var out []string
	for _, s := range svcs {
		if s.Spec.TaskTemplate.ContainerSpec == nil {
			continue
		}
		for _, m := range s.Spec.TaskTemplate.ContainerSpec.Mounts {
			if m.Type == mount.TypeCluster && (m.Source == v.Name || (v.ClusterVolume.Spec.Group != "" && m.Source == "group:"+v.ClusterVolume.Spec.Group)) {
				out = append(out, s.Spec.Name)
				break
			}
		}
	}
	return out
}

// nodeByHostname is the node whose host is named h: the plugin's node id
// is the hostname unless set otherwise.
func nodeByHostname(nodes []swarm.Node, h string) (swarm.Node, bool) {
	for _, n := range nodes {
		if n.Description.Hostname == h {
			return n, true
		}
	}
	return swarm.Node{}, false
}

func nodeByID(nodes []swarm.Node, id string) (swarm.Node, bool) {
	for _, n := range nodes {
		if n.ID == id {
			return n, true
		}
	}
	return swarm.Node{}, false
}

// createCommand is the docker volume create that makes v.
func createCommand(v stackvol.Volume) string {
	s := v.Spec
	args := []string{"docker volume create --driver " + v.Driver}
	if s.AccessMode != nil {
		if s.AccessMode.BlockVolume != nil {
			args = append(args, "--type block")
		} else {
			args = append(args, "--type mount")
		}
		args = append(args, "--scope "+string(s.AccessMode.Scope), "--sharing "+string(s.AccessMode.Sharing))
	}
	if s.Group != "" {
		args = append(args, "--group "+s.Group)
	}
	if r := s.CapacityRange; r != nil {
		if r.RequiredBytes > 0 {
			args = append(args, fmt.Sprintf("--required-bytes %d", r.RequiredBytes))
		}
		if r.LimitBytes > 0 {
			args = append(args, fmt.Sprintf("--limit-bytes %d", r.LimitBytes))
		}
	}
	for _, sec := range s.Secrets {
		args = append(args, "--secret "+sec.Key+"="+sec.Secret)
	}
	for _, k := range sortedKeys(v.DriverOpts) {
		args = append(args, "--opt "+k+"="+v.DriverOpts[k])
	}
	for _, k := range sortedKeys(v.Labels) {
		args = append(args, "--label "+k+"="+v.Labels[k])
	}
	if s.Availability != "" && s.Availability != volume.AvailabilityActive {
		args = append(args, "--availability "+string(s.Availability))
	}
	return strings.Join(append(args, v.Name), " ")
}
