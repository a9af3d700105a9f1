package ops

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/volume"
)

// stuckWorld is a healthy world with volume "stuck" (vol-5, 3 GiB, with
// its options, labels and spec) that Swarm counts as published to n-far,
// whose plugin does not hold it (its metrics show only vol-2), while the
// controller still has it published to n-far's CSI node id, "worker".
func stuckWorld(t *testing.T) *world {
	w := healthyWorld(t)
	w.engine.vols["stuck"] = &volume.Volume{Name: "stuck", Driver: "swarm-csi:latest",
		Options: map[string]string{"fsType": "xfs"}, Labels: map[string]string{"app": "db"},
		ClusterVolume: &volume.ClusterVolume{ID: "cv-stuck",
			Spec: volume.ClusterVolumeSpec{Group: "dbs", AccessMode: &volume.AccessMode{Scope: volume.ScopeSingleNode, Sharing: volume.SharingNone, MountVolume: &volume.TypeMount{}},
				CapacityRange: &volume.CapacityRange{RequiredBytes: 1 << 30, LimitBytes: 2 << 30}},
			Info:          &volume.Info{VolumeID: "vol-5", CapacityBytes: 3 << 30},
			PublishStatus: []*volume.PublishStatus{{NodeID: "n-far", State: volume.StatePendingNodeUnpublish}}}}
	w.csi.vols["vol-5"] = &csi.Volume{VolumeId: "vol-5", CapacityBytes: 3 << 30}
	w.csi.nodes["vol-5"] = []string{"worker"}
	// Swarm's CreateVolume of the name finds the driver's volume again.
	w.engine.swarmCreates = func(name string) string { return map[string]string{"stuck": "vol-5"}[name] }
	return w
}

func TestReleaseStuckVolume(t *testing.T) {
	w := stuckWorld(t)
	out := w.want(0, "volume stuck released: created again as vol-5", "volume", "release", "stuck")
	if !strings.Contains(out, "node worker: its plugin holds nothing of volume stuck (asked through the metrics of worker's plugin)") {
		t.Errorf("release does not say how it checked the node:\n%s", out)
	}
	if !strings.Contains(out, "creating volume stuck again as: docker volume create --driver swarm-csi:latest --type mount --scope single --sharing none "+
		"--group dbs --required-bytes 1073741824 --limit-bytes 3221225472 --opt fsType=xfs --label app=db stuck\n") {
		t.Errorf("release does not give the command that creates the volume again before it removes it:\n%s", out)
	}
	if c := w.changes(); !slices.Equal(c, []string{"ControllerUnpublishVolume vol-5 worker"}) {
		t.Errorf("plugin calls %v, want the controller's unpublish from worker", c)
	}
	if c := w.engine.changes; !slices.Equal(c, []string{"rm force=true stuck", "create stuck"}) {
		t.Errorf("Engine calls %v, want rm --force then create", c)
	}
	v := w.engine.vols["stuck"]
	s := v.ClusterVolume.Spec
	if v.Options["fsType"] != "xfs" || v.Labels["app"] != "db" || s.Group != "dbs" || s.AccessMode.Scope != volume.ScopeSingleNode ||
		s.CapacityRange.RequiredBytes != 1<<30 || s.CapacityRange.LimitBytes != 3<<30 || len(v.ClusterVolume.PublishStatus) != 0 {
		t.Errorf("created again as %+v, spec %+v: want its options, labels, group, mode, and its limit raised to its 3 GiB", v, s)
	}
	// Released: doctor finds nothing; a second release has nothing to do.
	w.doctor(0)
	w.want(0, "is not published anywhere: nothing to release", "volume", "release", "stuck")
}

// rejoin makes n-far's host leave the swarm and join it again as n-new:
// n-far stays, down, with the same CSI node id.
func rejoin(w *world) {
	far := w.engine.nodes["n-far"]
	again := far
	again.ID = "n-new"
	w.engine.nodes["n-new"] = again
	far.Status.State = swarm.NodeStateDown
	w.engine.nodes["n-far"] = far
}

// A host that left the swarm and joined again as a new node: Swarm counts
// the volume published to the old node, down for ever; the host's plugin
// answers for it.
func TestReleaseRejoinedHost(t *testing.T) {
	w := stuckWorld(t)
	rejoin(w)
	r := w.doctor(1)
	wantFinding(t, r, levelFail, "stuck", "published to worker (n-far), which is down; the same host is in the swarm again as n-new, and its plugin does not hold it",
		"swarm-csi volume release stuck")
	out := w.want(0, "volume stuck released", "volume", "release", "stuck")
	if !strings.Contains(out, "node worker (n-far) is down; the same host is in the swarm again as n-new\nnode worker: its plugin holds nothing of volume stuck") {
		t.Errorf("release output:\n%s", out)
	}
	if c := w.changes(); !slices.Equal(c, []string{"ControllerUnpublishVolume vol-5 worker"}) {
		t.Errorf("plugin calls %v", c)
	}
}

// Swarm never unpublishes a volume from a node removed from the swarm
// (docker node rm): release takes such a node as gone, and lets go of the
// host the backend has it attached to when no node of the swarm is that
// host.
func TestReleaseRemovedNode(t *testing.T) {
	w := stuckWorld(t)
	w.engine.vols["stuck"].ClusterVolume.PublishStatus[0].NodeID = "n-lost"
	w.csi.nodes["vol-5"] = []string{"lost-host"}
	r := w.doctor(1)
	wantFinding(t, r, levelFail, "stuck", "published to node n-lost, which is not in the swarm any more", "swarm-csi volume release stuck")
	out := w.want(0, "volume stuck released", "volume", "release", "stuck")
	for _, want := range []string{"node n-lost: not in the swarm any more (docker node rm): taken as gone",
		"host lost-host (the plugin's node id): no node of the swarm is that host any more: taken as gone"} {
		if !strings.Contains(out, want) {
			t.Errorf("release output lacks %q:\n%s", want, out)
		}
	}
	if c := w.changes(); !slices.Equal(c, []string{"ControllerUnpublishVolume vol-5 lost-host"}) {
		t.Errorf("plugin calls %v", c)
	}
}

// A node lost with a single-writer volume and removed from the swarm,
// while its service waits for the volume on another node: release lets
// go of the removed host only, and leaves the rest to Swarm.
func TestReleaseRemovedNodeServiceWaits(t *testing.T) {
	db := []swarm.Service{{Spec: swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "db"},
		TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Mounts: []mount.Mount{{Type: mount.TypeCluster, Source: "stuck"}}}}}}}
	w := stuckWorld(t)
	w.engine.services = db
	w.engine.vols["stuck"].ClusterVolume.PublishStatus = []*volume.PublishStatus{
		{NodeID: "n-lost", State: volume.StatePendingNodeUnpublish}, {NodeID: "n-far", State: volume.StatePending}}
	w.csi.nodes["vol-5"] = []string{"lost-host"}
	out := w.want(0, "released stuck from lost-host, which no node of the swarm is any more", "volume", "release", "stuck")
	if !strings.Contains(out, "service db still mounts volume stuck: Swarm publishes it to its task's node by itself") {
		t.Errorf("release output:\n%s", out)
	}
	if c := w.changes(); !slices.Equal(c, []string{"ControllerUnpublishVolume vol-5 lost-host"}) {
		t.Errorf("plugin calls %v", c)
	}
	if len(w.engine.changes) != 0 {
		t.Errorf("Engine calls %v: the volume stays as it is in Swarm", w.engine.changes)
	}

	// Refused: the lost node is still in the swarm (down), or the host the
	// volume is attached to is a node that reports no CSI node id.
	w = stuckWorld(t)
	w.engine.services = db
	n := w.engine.nodes["n-far"]
	n.Status.State = swarm.NodeStateDown
	w.engine.nodes["n-far"] = n
	w.want(1, "refused: volume stuck is published to worker (n-far), which is down, and service db waits for it. If worker comes back, Swarm unpublishes the volume by itself. If it is gone for good (powered off, never to return): docker node rm --force n-far, then swarm-csi volume release stuck again",
		"volume", "release", "stuck")
	w = stuckWorld(t)
	w.engine.services = db
	n = w.engine.nodes["n-far"]
	n.Description.CSIInfo = nil
	w.engine.nodes["n-far"] = n
	w.want(1, "refused: service db still mounts volume stuck", "volume", "release", "stuck")
	if c := w.changes(); len(c) != 0 || len(w.engine.changes) != 0 {
		t.Errorf("a refused release changed %v %v", c, w.engine.changes)
	}
}

func TestReleaseHereThroughTheSocket(t *testing.T) {
	w := healthyWorld(t)
	w.csi.abnormal["vol-1"] = "NotMounted"
	w.engine.swarmCreates = func(string) string { return "vol-1" }
	out := w.want(0, "volume pgdata released", "volume", "release", "pgdata")
	if !strings.Contains(out, "node manager: its plugin holds nothing of volume pgdata (asked through this node's plugin socket)") {
		t.Errorf("release output:\n%s", out)
	}
	if c := w.changes(); !slices.Equal(c, []string{"ControllerUnpublishVolume vol-1 manager"}) {
		t.Errorf("plugin calls %v", c)
	}
}

// Everything the driver cannot decide is refused, with the reason and
// what is left to do, and nothing changes.
func TestReleaseRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(w *world)
		want  string
	}{
		{"held by a live node", func(w *world) {
			w.engine.vols["stuck"] = w.engine.vols["cache"] // vol-2 is in n-far's metrics
			w.engine.vols["stuck"].Name = "stuck"
		}, "refused: worker's plugin has volume stuck mounted (asked through the metrics of worker's plugin): a container there may use it; on worker: docker ps --filter volume=stuck"},
		{"held here", func(w *world) {
			w.engine.vols["stuck"] = w.engine.vols["pgdata"]
			w.engine.vols["stuck"].Name = "stuck"
		}, "refused: manager's plugin has volume stuck mounted (asked through this node's plugin socket)"},
		{"node down", func(w *world) {
			n := w.engine.nodes["n-far"]
			n.Status.State = swarm.NodeStateDown
			w.engine.nodes["n-far"] = n
		}, "refused: volume stuck is published to worker (n-far), which is down, so its plugin cannot be asked whether a container there still writes to it. If worker comes back, Swarm unpublishes the volume by itself. If it is gone for good (powered off, never to return): docker node rm --force n-far"},
		{"re-joined, and holds it", func(w *world) {
			rejoin(w)
			w.engine.vols["stuck"].ClusterVolume.Info.VolumeID = "vol-2" // in worker's metrics
			w.csi.vols["vol-2"] = &csi.Volume{VolumeId: "vol-2"}
		}, "refused: worker's plugin still has volume stuck mounted (asked through the metrics of worker's plugin): the host left the swarm with the volume in use"},
		{"removed, and its host attached in the backend is a live node holding it", func(w *world) {
			w.engine.vols["stuck"].ClusterVolume.PublishStatus[0].NodeID = "n-lost"
			w.csi.nodes["vol-5"] = []string{"manager"}
			w.csi.abnormal = map[string]string{} // mounted here
		}, "refused: manager's plugin has volume stuck mounted"},
		{"attached in the backend to a host that is down", func(w *world) {
			w.csi.nodes["vol-5"] = []string{"worker", "manager"}
			w.csi.abnormal["vol-5"] = "NotMounted"
			here := w.engine.nodes["n-here"]
			here.Status.State = swarm.NodeStateDown
			w.engine.nodes["n-here"] = here
		}, "refused: volume stuck is published to manager (n-here), which is down"},
		{"no metrics", func(w *world) {
			w.engine.plugins["swarm-csi:latest"].Settings.Env = nil
		}, "refused: cannot tell whether worker's plugin holds volume stuck: node worker: other nodes answer through their plugin's metrics, which are off"},
		{"a service mounts it", func(w *world) {
			w.engine.services = []swarm.Service{{Spec: swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "db"},
				TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Mounts: []mount.Mount{{Type: mount.TypeCluster, Source: "group:dbs"}}}}}}}
		}, "refused: service db still mounts volume stuck; remove it (docker service rm db)"},
		{"not created", func(w *world) {
			w.engine.vols["stuck"].ClusterVolume.Info = nil
		}, "volume stuck is not created yet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := stuckWorld(t)
			tc.setup(w)
			w.want(1, tc.want, "volume", "release", "stuck")
			if c := w.changes(); len(c) != 0 || len(w.engine.changes) != 0 {
				t.Errorf("a refused release changed %v %v", c, w.engine.changes)
			}
		})
	}
}

// When Swarm does not give the volume back as it was, release says so and
// how to finish by hand.
func TestReleaseRecreateGoesWrong(t *testing.T) {
	w := stuckWorld(t)
	w.engine.swarmCreates = func(string) string { return "vol-new" }
	w.want(1, "volume stuck came back as vol-new, not vol-5: the driver made a new volume; vol-5 is still in the backend (swarm-csi volume ls); undo with: docker volume rm --force stuck; then docker volume create --driver swarm-csi:latest --type mount --scope single --sharing none --group dbs --required-bytes 1073741824 --limit-bytes 3221225472 --opt fsType=xfs --label app=db stuck",
		"volume", "release", "stuck")

	w = stuckWorld(t)
	w.engine.swarmCreates = nil
	defer func(d time.Duration) { recreateTimeout = d }(recreateTimeout)
	recreateTimeout = 300 * time.Millisecond
	w.want(1, "volume stuck is still pending creation 300ms after it was created again: swarm-csi doctor shows the driver's error", "volume", "release", "stuck")
}
