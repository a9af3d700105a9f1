package ops

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/docker/go-units"
	"github.com/moby/moby/api/types/volume"

	"github.com/swarm-csi/swarm-csi/pkg/controller"
)

// swarmVolume returns the Swarm volume NAME of this plugin.
func (o *op) swarmVolume(ctx context.Context, name string) (*volume.Volume, string, error) {
	v, err := o.engine.Inspect(ctx, name)
	if err != nil {
		return nil, "", err
	}
	if v == nil {
		return nil, "", fmt.Errorf("no volume %s (docker volume ls --cluster lists them)", name)
	}
	if v.Driver != o.plugin {
		return nil, "", fmt.Errorf("volume %s belongs to driver %s, not %s", name, v.Driver, o.plugin)
	}
	if v.ClusterVolume == nil || v.ClusterVolume.Info == nil || v.ClusterVolume.Info.VolumeID == "" {
		return nil, "", fmt.Errorf("volume %s is not created yet%s", name, o.whyPending(ctx, name))
	}
	return v, v.ClusterVolume.Info.VolumeID, nil
}

// publishedPath is where Swarm has the node plugin publish a volume.
func publishedPath(v *volume.Volume) string { return "/data/published/" + v.ClusterVolume.ID }

func publishedOn(v *volume.Volume) []string {
	var nodes []string
	for _, p := range v.ClusterVolume.PublishStatus {
		nodes = append(nodes, p.NodeID)
	}
	sort.Strings(nodes)
	return nodes
}

type volumeRow struct {
	Name      string   `json:"name,omitempty"`
	VolumeID  string   `json:"volume_id"`
	SizeBytes int64    `json:"size_bytes"`
	Status    string   `json:"status"`
	Nodes     []string `json:"nodes,omitempty"`
	Orphan    bool     `json:"orphan,omitempty"`
	Remove    string   `json:"remove,omitempty"`
}

func (o *op) volumeLs(ctx context.Context) error {
	swarm, err := o.engine.Volumes(ctx, o.plugin)
	if err != nil {
		return err
	}
	byID := map[string]volume.Volume{}
	var rows []volumeRow
	for _, v := range swarm {
		if v.ClusterVolume == nil {
			continue
		}
		if v.ClusterVolume.Info != nil && v.ClusterVolume.Info.VolumeID != "" {
			byID[v.ClusterVolume.Info.VolumeID] = v
			continue
		}
		rows = append(rows, volumeRow{Name: v.Name, Status: "pending creation"})
	}
	token := ""
	for {
		r, err := o.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: token})
		if err != nil {
			return fmt.Errorf("the plugin's ListVolumes: %w", err)
		}
		for _, e := range r.GetEntries() {
			cv := e.GetVolume()
			row := volumeRow{VolumeID: cv.GetVolumeId(), SizeBytes: cv.GetCapacityBytes(), Nodes: e.GetStatus().GetPublishedNodeIds()}
			if v, ok := byID[cv.GetVolumeId()]; ok {
				row.Name, row.Status = v.Name, "created"
				if len(v.ClusterVolume.PublishStatus) > 0 {
					row.Status = "in use"
				}
				delete(byID, cv.GetVolumeId())
			} else {
				row.Status, row.Orphan = "orphan", true
				row.Remove = "swarm-csi volume rm-orphan " + cv.GetVolumeId()
			}
			rows = append(rows, row)
		}
		if token = r.GetNextToken(); token == "" {
			break
		}
	}
	for id, v := range byID {
		rows = append(rows, volumeRow{Name: v.Name, VolumeID: id, Status: "missing in the backend"})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name+rows[i].VolumeID < rows[j].Name+rows[j].VolumeID })
	return o.print(rows, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "NAME\tVOLUME ID\tSIZE\tSTATUS\tNODES")
		for _, r := range rows {
			name := r.Name
			if name == "" {
				name = "-"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", name, r.VolumeID, units.BytesSize(float64(r.SizeBytes)), r.Status, strings.Join(r.Nodes, ","))
		}
		for _, r := range rows {
			if r.Orphan {
				fmt.Fprintf(w, "orphan %s: no Swarm volume refers to it (docker volume rm --force, or a lost manager); delete it with: %s\n", r.VolumeID, r.Remove)
			}
		}
	})
}

func (o *op) volumeRmOrphan(ctx context.Context, id string) error {
	swarm, err := o.engine.Volumes(ctx, o.plugin)
	if err != nil {
		return err
	}
	for _, v := range swarm {
		if v.ClusterVolume != nil && v.ClusterVolume.Info != nil && v.ClusterVolume.Info.VolumeID == id {
			return fmt.Errorf("%s is Swarm volume %s, not an orphan: docker volume rm %s", id, v.Name, v.Name)
		}
	}
	if _, err := o.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id}); err != nil {
		return fmt.Errorf("volume %s: %w", id, err)
	}
	if _, err := o.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	fmt.Fprintf(o.out, "deleted %s\n", id)
	return nil
}

func (o *op) volumeInspect(ctx context.Context, name string) error {
	v, id, err := o.swarmVolume(ctx, name)
	if err != nil {
		return err
	}
	r, err := o.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
	if err != nil {
		return fmt.Errorf("volume %s (%s): %w", name, id, err)
	}
	out := struct {
		Name       string            `json:"name"`
		VolumeID   string            `json:"volume_id"`
		SizeBytes  int64             `json:"size_bytes"`
		Context    map[string]string `json:"volume_context,omitempty"`
		Source     string            `json:"source,omitempty"`
		Nodes      []string          `json:"nodes,omitempty"`
		SwarmNodes []string          `json:"swarm_nodes,omitempty"`
		Abnormal   bool              `json:"abnormal"`
		Condition  string            `json:"condition,omitempty"`
	}{Name: name, VolumeID: id, SizeBytes: r.GetVolume().GetCapacityBytes(), Context: r.GetVolume().GetVolumeContext(),
		Nodes: r.GetStatus().GetPublishedNodeIds(), SwarmNodes: publishedOn(v)}
	if s := r.GetVolume().GetContentSource(); s != nil {
		out.Source = s.GetVolume().GetVolumeId() + s.GetSnapshot().GetSnapshotId()
	}
	if h, err := o.ctrl.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id}); err == nil {
		out.Abnormal, out.Condition = healthProblem(h.GetVolumeHealth())
	}
	return o.print(out, func(w *tabwriter.Writer) {
		fmt.Fprintf(w, "name\t%s\nvolume id\t%s\nsize\t%s (%d bytes)\n", out.Name, out.VolumeID, units.BytesSize(float64(out.SizeBytes)), out.SizeBytes)
		for _, k := range sortedKeys(out.Context) {
			fmt.Fprintf(w, "%s\t%s\n", k, out.Context[k])
		}
		if out.Source != "" {
			fmt.Fprintf(w, "copied from\t%s\n", out.Source)
		}
		fmt.Fprintf(w, "published to (plugin's node ids)\t%s\n", strings.Join(out.Nodes, ", "))
		fmt.Fprintf(w, "published to (Swarm node ids)\t%s\n", strings.Join(out.SwarmNodes, ", "))
		cond := "normal"
		if out.Abnormal {
			cond = "ABNORMAL"
		}
		fmt.Fprintf(w, "condition\t%s %s\n", cond, out.Condition)
	})
}

// healthProblem reports the first problem of a volume's health, if any:
// its reason (NotMounted, StorageMissing...) and message.
func healthProblem(h *csi.VolumeHealth) (bool, string) {
	for _, st := range h.GetHealthStatuses() {
		return true, st.GetReason() + ": " + st.GetMessage()
	}
	return false, ""
}

func (o *op) volumeExpand(ctx context.Context, name, size string) error {
	v, id, err := o.swarmVolume(ctx, name)
	if err != nil {
		return err
	}
	want, err := units.RAMInBytes(size)
	if err != nil || want <= 0 {
		return fmt.Errorf("%w: size %q: want a size such as 20G", errUsage, size)
	}
	cur, err := o.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
	if err != nil {
		return fmt.Errorf("volume %s: %w", name, err)
	}
	have := cur.GetVolume().GetCapacityBytes()
	if want < have {
		return fmt.Errorf("volume %s is %s (%d bytes): %s is smaller; volumes do not shrink", name, units.BytesSize(float64(have)), have, size)
	}
	r, err := o.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: want}})
	if err != nil {
		return fmt.Errorf("expand %s: %w", name, err)
	}
	fmt.Fprintf(o.out, "volume %s: %d bytes (was %d)\n", name, r.GetCapacityBytes(), have)
	nodes := publishedOn(v)
	if len(nodes) == 0 {
		fmt.Fprintln(o.out, "not in use: the filesystem grows when the volume is next mounted")
		return nil
	}
	if !r.GetNodeExpansionRequired() {
		return nil
	}
	// Here at once; elsewhere each node's plugin notices within its
	// --grow-interval.
	here, _ := o.engine.ThisNode(ctx) // unknown: no node is this one
	for _, n := range nodes {
		if n != here {
			fmt.Fprintf(o.out, "node %s: its plugin grows the filesystem on its own (within --grow-interval)\n", n)
			continue
		}
		nr, err := o.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: publishedPath(v),
			CapacityRange: &csi.CapacityRange{RequiredBytes: want}})
		if err != nil {
			return fmt.Errorf("volume %s grew, but its filesystem on this node did not: %w", name, err)
		}
		fmt.Fprintf(o.out, "node %s (this one): filesystem grown, the device has %d bytes\n", n, nr.GetCapacityBytes())
	}
	return nil
}

// whyPending is the driver's last error for a volume pending creation, as
// the plugin here recorded it, or where to look.
func (o *op) whyPending(ctx context.Context, name string) string {
	if o.conn != nil {
		errs, _ := controller.FetchCreateErrors(ctx, o.conn)
		for _, e := range errs {
			if e.Name == name {
				return fmt.Sprintf(": the driver refused it %d time(s), last at %s: %s: %s", e.Attempts, e.Last.Format(time.RFC3339), e.Code, e.Message)
			}
		}
	}
	return fmt.Sprintf(" (docker volume inspect %s; swarm-csi doctor)", name)
}
