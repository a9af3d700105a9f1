package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/go-units"
	"github.com/moby/moby/api/types/plugin"
	"github.com/moby/moby/api/types/volume"
	"github.com/moby/moby/client"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// The operator's commands: what Swarm cannot do with a volume (grow it,
// snapshot it, see how full it is), on the volume names Swarm knows. They
// find the volume's id through the Docker Engine API (DOCKER_HOST, a
// manager) and the plugin's socket from `docker plugin inspect`.

// errUsage makes the exit status 2.
var errUsage = errors.New("usage")

const opsUsage = `usage: swarm-csi [options] COMMAND
  volume ls                     the plugin's volumes beside Swarm's; orphans marked
  volume inspect NAME           one volume: id, size, nodes, condition
  volume expand NAME SIZE       grow a volume (e.g. 20G); in use, it grows online
  volume stats NAME             capacity, used, free (bytes and inodes) and condition
                                on every node it is published on (other nodes
                                through their plugin's METRICS_ADDR)
  volume rm-orphan ID           delete a disk no Swarm volume refers to
  snapshot create VOLUME NAME   snapshot a volume
  snapshot ls [VOLUME]          list snapshots
  snapshot rm NAME              delete a snapshot
options (before COMMAND):
  --plugin NAME      the plugin (default swarm-csi:latest)
  --socket PATH      the plugin's CSI socket, instead of finding it
  --format table|json
Exit status: 0 done, 1 failed (nothing changed unless it says so), 2 bad usage.`

type ops struct {
	docker *client.Client
	plugin string
	socket string
	json   bool
	out    io.Writer

	conn *grpc.ClientConn
	ctrl csi.ControllerClient
	node csi.NodeClient

	installed *plugin.Plugin // from docker plugin inspect, once asked
}

// opsMain runs an operator command; it returns the exit status.
func opsMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("swarm-csi", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o := &ops{out: stdout}
	fs.StringVar(&o.plugin, "plugin", "swarm-csi:latest", "")
	fs.StringVar(&o.socket, "socket", "", "")
	format := fs.String("format", "table", "")
	err := fs.Parse(args)
	if err == nil && *format != "table" && *format != "json" {
		err = fmt.Errorf("--format %q: want table or json", *format)
	}
	if err == nil && fs.NArg() < 2 {
		err = errUsage
	}
	if err == nil {
		o.json = *format == "json"
		err = o.run(ctx, fs.Args())
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp):
		if !errors.Is(err, errUsage) || err.Error() != errUsage.Error() {
			fmt.Fprintln(stderr, "swarm-csi:", err)
		}
		fmt.Fprintln(stderr, opsUsage)
		return 2
	default:
		fmt.Fprintln(stderr, "swarm-csi:", err)
		return 1
	}
}

func (o *ops) run(ctx context.Context, args []string) error {
	want := map[string]int{"volume ls": 0, "volume inspect": 1, "volume expand": 2, "volume stats": 1,
		"volume rm-orphan": 1, "snapshot create": 2, "snapshot ls": -1, "snapshot rm": 1}
	cmd := args[0] + " " + args[1]
	n, ok := want[cmd]
	rest := args[2:]
	if !ok || (n >= 0 && len(rest) != n) || (n < 0 && len(rest) > 1) {
		return fmt.Errorf("%w: %s", errUsage, strings.Join(args, " "))
	}
	var err error
	if o.docker, err = client.New(client.FromEnv); err != nil {
		return err
	}
	defer o.docker.Close()
	if err := o.connect(ctx); err != nil {
		return err
	}
	defer o.conn.Close()
	switch cmd {
	case "volume ls":
		return o.volumeLs(ctx)
	case "volume inspect":
		return o.volumeInspect(ctx, rest[0])
	case "volume expand":
		return o.volumeExpand(ctx, rest[0], rest[1])
	case "volume stats":
		return o.volumeStats(ctx, rest[0])
	case "volume rm-orphan":
		return o.volumeRmOrphan(ctx, rest[0])
	case "snapshot create":
		return o.snapshotCreate(ctx, rest[0], rest[1])
	case "snapshot ls":
		return o.snapshotLs(ctx, rest)
	default:
		return o.snapshotRm(ctx, rest[0])
	}
}

// pluginsDir is where Docker on Linux keeps its plugins' sockets, whatever
// its --exec-root (moby daemon/daemon_linux.go getPluginExecRoot).
const pluginsDir = "/run/docker/plugins"

// connect finds the plugin's socket (/run/docker/plugins/<id>/csi.sock)
// and dials it.
func (o *ops) connect(ctx context.Context) error {
	sock := o.socket
	if sock == "" {
		p, err := o.pluginInspect(ctx)
		if err != nil {
			return err
		}
		if !p.Enabled {
			return fmt.Errorf("plugin %s is disabled: docker plugin enable %s", o.plugin, o.plugin)
		}
		sock = filepath.Join(pluginsDir, p.ID, p.Config.Interface.Socket)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	o.conn, o.ctrl, o.node = conn, csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	return nil
}

// pluginInspect is `docker plugin inspect` of the plugin, asked once.
func (o *ops) pluginInspect(ctx context.Context) (*plugin.Plugin, error) {
	if o.installed == nil {
		r, err := o.docker.PluginInspect(ctx, o.plugin, client.PluginInspectOptions{})
		if err != nil {
			return nil, fmt.Errorf("plugin %s: %w", o.plugin, err)
		}
		o.installed = &r.Plugin
	}
	return o.installed, nil
}

// swarmVolume returns the Swarm volume NAME of this plugin.
func (o *ops) swarmVolume(ctx context.Context, name string) (*volume.Volume, string, error) {
	r, err := o.docker.VolumeInspect(ctx, name, client.VolumeInspectOptions{})
	if cerrdefs.IsNotFound(err) {
		return nil, "", fmt.Errorf("no volume %s (docker volume ls --cluster lists them)", name)
	}
	if err != nil {
		return nil, "", err
	}
	v := r.Volume
	if v.Driver != o.plugin {
		return nil, "", fmt.Errorf("volume %s belongs to driver %s, not %s", name, v.Driver, o.plugin)
	}
	if v.ClusterVolume == nil || v.ClusterVolume.Info == nil || v.ClusterVolume.Info.VolumeID == "" {
		return nil, "", fmt.Errorf("volume %s is not created yet (docker volume inspect %s)", name, name)
	}
	return &v, v.ClusterVolume.Info.VolumeID, nil
}

// thisNode is the Swarm node id of the Engine the command talks to.
func (o *ops) thisNode(ctx context.Context) string {
	info, err := o.docker.Info(ctx, client.InfoOptions{})
	if err != nil {
		return ""
	}
	return info.Info.Swarm.NodeID
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

func (o *ops) print(v any, table func(w *tabwriter.Writer)) error {
	if o.json {
		enc := json.NewEncoder(o.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	w := tabwriter.NewWriter(o.out, 0, 0, 2, ' ', 0)
	table(w)
	return w.Flush()
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

func (o *ops) volumeLs(ctx context.Context) error {
	swarm, err := o.docker.VolumeList(ctx, client.VolumeListOptions{Filters: make(client.Filters).Add("driver", o.plugin)})
	if err != nil {
		return err
	}
	byID := map[string]volume.Volume{}
	var rows []volumeRow
	for _, v := range swarm.Items {
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

func (o *ops) volumeRmOrphan(ctx context.Context, id string) error {
	swarm, err := o.docker.VolumeList(ctx, client.VolumeListOptions{Filters: make(client.Filters).Add("driver", o.plugin)})
	if err != nil {
		return err
	}
	for _, v := range swarm.Items {
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

func (o *ops) volumeInspect(ctx context.Context, name string) error {
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

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func (o *ops) volumeExpand(ctx context.Context, name, size string) error {
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
	here := o.thisNode(ctx)
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

// snapshots lists the snapshots, of one source volume if sourceID is set.
func (o *ops) snapshots(ctx context.Context, sourceID string) ([]*csi.Snapshot, error) {
	var out []*csi.Snapshot
	token := ""
	for {
		r, err := o.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: sourceID, StartingToken: token})
		if err != nil {
			return nil, err
		}
		for _, e := range r.GetEntries() {
			out = append(out, e.GetSnapshot())
		}
		if token = r.GetNextToken(); token == "" {
			return out, nil
		}
	}
}

// snapshotNamed finds a snapshot by the name it was created with, or its
// id (swarm-csi's ListSnapshots takes either), or returns nil.
func (o *ops) snapshotNamed(ctx context.Context, name string) (*csi.Snapshot, error) {
	r, err := o.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: name})
	if err != nil {
		return nil, err
	}
	if len(r.GetEntries()) == 0 {
		return nil, nil
	}
	return r.GetEntries()[0].GetSnapshot(), nil
}

func (o *ops) snapshotCreate(ctx context.Context, volName, snapName string) error {
	_, id, err := o.swarmVolume(ctx, volName)
	if err != nil {
		return err
	}
	// CreateSnapshot of a name that exists answers with that snapshot
	// (or AlreadyExists for another source): refuse it here, plainly.
	if s, err := o.snapshotNamed(ctx, snapName); err != nil {
		return err
	} else if s != nil {
		return fmt.Errorf("snapshot %s exists already (%s of volume id %s, %s): choose another name", snapName,
			s.GetSnapshotId(), s.GetSourceVolumeId(), s.GetCreationTime().AsTime().Format(time.RFC3339))
	}
	start := time.Now()
	r, err := o.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: snapName, SourceVolumeId: id})
	if err != nil {
		return fmt.Errorf("snapshot %s of %s: %w", snapName, volName, err)
	}
	fmt.Fprintf(o.out, "snapshot %s of %s: %s, %d bytes, in %s\n", snapName, volName, r.GetSnapshot().GetSnapshotId(),
		r.GetSnapshot().GetSizeBytes(), time.Since(start).Round(time.Millisecond))
	return nil
}

func (o *ops) snapshotLs(ctx context.Context, args []string) error {
	src := ""
	if len(args) == 1 {
		_, id, err := o.swarmVolume(ctx, args[0])
		if err != nil {
			return err
		}
		src = id
	}
	snaps, err := o.snapshots(ctx, src)
	if err != nil {
		return err
	}
	type row struct {
		SnapshotID string    `json:"snapshot_id"`
		Source     string    `json:"source_volume_id"`
		SizeBytes  int64     `json:"size_bytes"`
		Created    time.Time `json:"created"`
		Ready      bool      `json:"ready"`
	}
	var rows []row
	for _, s := range snaps {
		rows = append(rows, row{s.GetSnapshotId(), s.GetSourceVolumeId(), s.GetSizeBytes(), s.GetCreationTime().AsTime(), s.GetReadyToUse()})
	}
	return o.print(rows, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "SNAPSHOT ID\tSOURCE VOLUME ID\tSIZE\tCREATED\tREADY")
		for _, r := range rows {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%t\n", r.SnapshotID, r.Source, units.BytesSize(float64(r.SizeBytes)), r.Created.Format(time.RFC3339), r.Ready)
		}
	})
}

func (o *ops) snapshotRm(ctx context.Context, name string) error {
	s, err := o.snapshotNamed(ctx, name)
	if err != nil {
		return err
	}
	if s == nil {
		return fmt.Errorf("no snapshot %s (swarm-csi snapshot ls lists them)", name)
	}
	if _, err := o.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.GetSnapshotId()}); err != nil {
		return fmt.Errorf("snapshot %s: %w", name, err)
	}
	fmt.Fprintf(o.out, "deleted %s (%s)\n", name, s.GetSnapshotId())
	return nil
}

// operatorCommand returns the operator command args ask for (its options
// first, then the command word), or nil to run the driver.
func operatorCommand(args []string) func(context.Context, []string, io.Writer, io.Writer) int {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "stack":
			if i != 0 {
				return nil
			}
			return func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
				return stackMain(ctx, args[1:], stdout, stderr)
			}
		case a == "volume" || a == "snapshot":
			return opsMain
		case a == "--plugin" || a == "--socket" || a == "--format":
			i++ // its value
		case strings.HasPrefix(a, "--plugin=") || strings.HasPrefix(a, "--socket=") || strings.HasPrefix(a, "--format="):
		default:
			return nil
		}
	}
	return nil
}
