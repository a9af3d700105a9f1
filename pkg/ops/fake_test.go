package ops

import (
	"bytes"
	"cmp"
	"context"
	"flag"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/moby/api/types/plugin"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/volume"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/swarm-csi/swarm-csi/pkg/controller"
	"github.com/swarm-csi/swarm-csi/pkg/metrics"
	"github.com/swarm-csi/swarm-csi/pkg/stackvol"
)

// fakeEngine is the Docker Engine of a manager, as the tests set it up.
type fakeEngine struct {
	vols     map[string]*volume.Volume
	plugins  map[string]*plugin.Plugin
	nodes    map[string]swarm.Node
	services []swarm.Service
	here     string   // this Engine's node
	changes  []string // the calls that changed something
	// swarmCreates, if set, is the driver's volume id Swarm gets at once
	// for a volume created through Create; else it stays pending.
	swarmCreates func(name string) string
}

func (e *fakeEngine) Inspect(_ context.Context, name string) (*volume.Volume, error) {
	if v, ok := e.vols[name]; ok {
		c := *v
		return &c, nil
	}
	return nil, nil
}

func (e *fakeEngine) Create(_ context.Context, v stackvol.Volume) error {
	e.changes = append(e.changes, "create "+v.Name)
	e.vols[v.Name] = &volume.Volume{Name: v.Name, Driver: v.Driver, Options: v.DriverOpts, Labels: v.Labels,
		ClusterVolume: &volume.ClusterVolume{ID: "cv2-" + v.Name, Spec: v.Spec}}
	if e.swarmCreates != nil {
		e.vols[v.Name].ClusterVolume.Info = &volume.Info{VolumeID: e.swarmCreates(v.Name)}
	}
	return nil
}

func (e *fakeEngine) Volumes(_ context.Context, driver string) ([]volume.Volume, error) {
	var out []volume.Volume
	for _, v := range e.vols {
		if v.Driver == driver {
			out = append(out, *v)
		}
	}
	return out, nil
}

func (e *fakeEngine) Plugin(_ context.Context, name string) (*plugin.Plugin, error) {
	if p, ok := e.plugins[name]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("plugin %q not found", name)
}

func (e *fakeEngine) Node(_ context.Context, id string) (swarm.Node, error) {
	if n, ok := e.nodes[id]; ok {
		return n, nil
	}
	return swarm.Node{}, fmt.Errorf("node %s not found", id)
}

func (e *fakeEngine) ThisNode(context.Context) (string, error) { return e.here, nil }

func (e *fakeEngine) Nodes(context.Context) ([]swarm.Node, error) {
	var out []swarm.Node
	for _, id := range slices.Sorted(maps.Keys(e.nodes)) {
		out = append(out, e.nodes[id])
	}
	return out, nil
}

func (e *fakeEngine) Services(context.Context) ([]swarm.Service, error) { return e.services, nil }

// Remove is docker volume rm: refused while Swarm has the volume
// published, unless forced.
func (e *fakeEngine) Remove(_ context.Context, name string, force bool) error {
	v, ok := e.vols[name]
	if !ok {
		return fmt.Errorf("no such volume: %s", name)
	}
	if !force && len(v.ClusterVolume.PublishStatus) > 0 {
		return fmt.Errorf("volume is still in use")
	}
	delete(e.vols, name)
	e.changes = append(e.changes, fmt.Sprintf("rm force=%t %s", force, name))
	return nil
}

func (e *fakeEngine) Close() error { return nil }

// fakeCSI is the plugin's Controller and Node service, on its socket;
// it serves one call at a time (serve).
type fakeCSI struct {
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	mu       sync.Mutex // held by each call
	vols     map[string]*csi.Volume
	nodes    map[string][]string      // the plugin's node ids by volume id
	snaps    map[string]*csi.Snapshot // by name
	abnormal map[string]string        // reason by volume id
	growErr  error                    // what NodeExpandVolume answers
	changes  []string                 // the calls that changed something
	failed   []controller.CreateError // the driver's record of failed creations
}

// CreateErrors is the driver's record, served as the driver serves it.
func (f *fakeCSI) CreateErrors() []controller.CreateError { return f.failed }

func (f *fakeCSI) ControllerUnpublishVolume(_ context.Context, r *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	f.nodes[r.GetVolumeId()] = slices.DeleteFunc(f.nodes[r.GetVolumeId()], func(n string) bool { return n == r.GetNodeId() })
	f.changed("ControllerUnpublishVolume", r.GetVolumeId()+" "+r.GetNodeId())
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}

func (f *fakeCSI) serve(ctx context.Context, req any, _ *grpc.UnaryServerInfo, call grpc.UnaryHandler) (any, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return call(ctx, req)
}

func (f *fakeCSI) changed(call, id string) {
	f.changes = append(f.changes, call+" "+id)
}

// ListVolumes answers one volume a page, so that the client must follow
// the tokens.
func (f *fakeCSI) ListVolumes(_ context.Context, r *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	var ids []string
	for id := range f.vols {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	i := 0
	if r.GetStartingToken() != "" {
		var err error
		if i, err = strconv.Atoi(r.GetStartingToken()); err != nil || i >= len(ids) {
			return nil, status.Error(codes.Aborted, "bad token")
		}
	}
	if len(ids) == 0 {
		return &csi.ListVolumesResponse{}, nil
	}
	resp := &csi.ListVolumesResponse{Entries: []*csi.ListVolumesResponse_Entry{{Volume: f.vols[ids[i]],
		Status: &csi.ListVolumesResponse_VolumeStatus{PublishedNodeIds: f.nodes[ids[i]]}}}}
	if i+1 < len(ids) {
		resp.NextToken = strconv.Itoa(i + 1)
	}
	return resp, nil
}

func (f *fakeCSI) volume(id string) (*csi.Volume, error) {
	v, ok := f.vols[id]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no volume %s", id)
	}
	return v, nil
}

func (f *fakeCSI) ControllerGetVolume(_ context.Context, r *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	v, err := f.volume(r.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeResponse{Volume: v,
		Status: &csi.ControllerGetVolumeResponse_VolumeStatus{PublishedNodeIds: f.nodes[v.VolumeId]}}, nil
}

func (f *fakeCSI) ControllerGetVolumeHealth(_ context.Context, r *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if _, err := f.volume(r.GetVolumeId()); err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: f.health(r.GetVolumeId())}, nil
}

func (f *fakeCSI) health(id string) *csi.VolumeHealth {
	h := &csi.VolumeHealth{VolumeId: id}
	if reason, ok := f.abnormal[id]; ok {
		h.HealthStatuses = []*csi.VolumeHealth_VolumeHealthEntry{{Reason: reason, Message: "it is gone"}}
	}
	return h
}

func (f *fakeCSI) DeleteVolume(_ context.Context, r *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	delete(f.vols, r.GetVolumeId())
	f.changed("DeleteVolume", r.GetVolumeId())
	return &csi.DeleteVolumeResponse{}, nil
}

func (f *fakeCSI) ControllerExpandVolume(_ context.Context, r *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	v, err := f.volume(r.GetVolumeId())
	if err != nil {
		return nil, err
	}
	v.CapacityBytes = max(v.CapacityBytes, r.GetCapacityRange().GetRequiredBytes())
	f.changed("ControllerExpandVolume", v.VolumeId)
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: v.CapacityBytes, NodeExpansionRequired: true}, nil
}

// ListSnapshots takes a snapshot's name or id as SnapshotId, as
// swarm-csi's does.
func (f *fakeCSI) ListSnapshots(_ context.Context, r *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	resp := &csi.ListSnapshotsResponse{}
	for _, name := range slices.Sorted(maps.Keys(f.snaps)) {
		s := f.snaps[name]
		if (r.GetSnapshotId() == "" || r.GetSnapshotId() == name || r.GetSnapshotId() == s.SnapshotId) &&
			(r.GetSourceVolumeId() == "" || r.GetSourceVolumeId() == s.SourceVolumeId) {
			resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: s})
		}
	}
	return resp, nil
}

func (f *fakeCSI) CreateSnapshot(_ context.Context, r *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	v, err := f.volume(r.GetSourceVolumeId())
	if err != nil {
		return nil, err
	}
	s := &csi.Snapshot{SnapshotId: "snap-" + r.GetName(), SourceVolumeId: v.VolumeId, SizeBytes: v.CapacityBytes,
		CreationTime: timestamppb.Now(), ReadyToUse: true}
	f.snaps[r.GetName()] = s
	f.changed("CreateSnapshot", r.GetName())
	return &csi.CreateSnapshotResponse{Snapshot: s}, nil
}

func (f *fakeCSI) DeleteSnapshot(_ context.Context, r *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	for name, s := range f.snaps {
		if s.SnapshotId == r.GetSnapshotId() {
			delete(f.snaps, name)
		}
	}
	f.changed("DeleteSnapshot", r.GetSnapshotId())
	return &csi.DeleteSnapshotResponse{}, nil
}

func (f *fakeCSI) NodeExpandVolume(_ context.Context, r *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if f.growErr != nil {
		return nil, f.growErr
	}
	f.changed("NodeExpandVolume", r.GetVolumeId()+" "+r.GetVolumePath())
	return &csi.NodeExpandVolumeResponse{CapacityBytes: r.GetCapacityRange().GetRequiredBytes()}, nil
}

func (f *fakeCSI) NodeGetVolumeHealth(_ context.Context, r *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: f.health(r.GetVolumeId())}, nil
}

func (f *fakeCSI) NodeGetVolumeStats(_ context.Context, r *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	v, err := f.volume(r.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: v.CapacityBytes, Used: 100 << 20, Available: v.CapacityBytes - 100<<20},
		{Unit: csi.VolumeUsage_INODES, Total: 65536, Used: 11, Available: 65525},
	}}, nil
}

// world is a swarm seen from its manager, node n-here, with the plugin
// swarm-csi:latest (its socket in a temporary plugins directory) and
// these volumes:
//
//	pgdata   published here        vol-1, 1 GiB
//	cache    published on n-far    vol-2, 2 GiB (n-far serves metrics)
//	idle     published nowhere     vol-3
//	lost     published on n-lost   vol-4 (a node the Engine does not know)
//	gone     created               vol-9, missing in the backend
//	pending  not created yet
//	logs     a local volume
//
// and vol-orphan, a disk no Swarm volume refers to.
type world struct {
	t              *testing.T
	cli            *CLI
	engine         *fakeEngine
	csi            *fakeCSI
	stdout, stderr bytes.Buffer
	// farSettings are the settings n-far's plugin reports: backend,
	// storage and version.
	farSettings map[string]string
}

// hereAddr is n-here's address in the swarm (its manager address), where
// its plugin serves its metrics.
const hereAddr = "127.0.0.2"

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{t: t, csi: &fakeCSI{vols: map[string]*csi.Volume{}, snaps: map[string]*csi.Snapshot{}, abnormal: map[string]string{},
		nodes: map[string][]string{"vol-1": {"manager"}, "vol-2": {"worker"}, "vol-4": {"lost"}}}}
	for id, size := range map[string]int64{"vol-1": 1 << 30, "vol-2": 2 << 30, "vol-3": 1 << 30, "vol-4": 1 << 30, "vol-orphan": 3 << 30} {
		w.csi.vols[id] = &csi.Volume{VolumeId: id, CapacityBytes: size}
	}

	// n-far's plugin serves its volume's series, as the driver does, and
	// its settings; n-here's, at the same port on another address, its
	// settings only.
	w.farSettings = map[string]string{"backend": "loop", "storage": "swarm-csi/store=s1"}
	serve := func(addr string, usage []metrics.Usage, settings func() map[string]string) *httptest.Server {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			s := settings()
			reg := prometheus.NewRegistry()
			reg.MustRegister(&metrics.VolumeCollector{Usage: func(context.Context) ([]metrics.Usage, error) { return usage, nil }},
				metrics.SettingsCollector(s["backend"], "swarm-csi", cmp.Or(s["version"], "v1"), map[string]string{"swarm-csi/store": strings.TrimPrefix(s["storage"], "swarm-csi/store=")}))
			promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rw, r)
		}))
		srv.Listener.Close()
		srv.Listener = lis
		srv.Start()
		t.Cleanup(srv.Close)
		return srv
	}
	far := serve("127.0.0.1:0", []metrics.Usage{{VolumeID: "vol-2", CapacityBytes: 2 << 30, UsedBytes: 300 << 20, AvailableBytes: 1 << 30,
		Inodes: 1000, InodesUsed: 40}}, func() map[string]string { return w.farSettings })
	host, port, _ := net.SplitHostPort(far.Listener.Addr().String())
	serve(net.JoinHostPort(hereAddr, port), nil, func() map[string]string {
		return map[string]string{"backend": "loop", "storage": "swarm-csi/store=s1"}
	})

	dir := t.TempDir()
	const pluginName = "swarm-csi:latest"
	w.engine = &fakeEngine{
		here: "n-here",
		plugins: map[string]*plugin.Plugin{pluginName: {ID: "p1", Name: pluginName, Enabled: true,
			Config: plugin.Config{Interface: plugin.Interface{Socket: "csi.sock"},
				Linux: plugin.LinuxConfig{Capabilities: []string{"CAP_SYS_ADMIN", "CAP_SYS_RESOURCE"}}},
			Settings: plugin.Settings{Env: []string{"DATA_DIR=/data", "METRICS_ADDR=:" + port}}}},
		nodes: map[string]swarm.Node{
			"n-here": swarmNode("n-here", "manager", "0.0.0.0"),
			"n-far":  swarmNode("n-far", "worker", host),
		},
		vols: map[string]*volume.Volume{"logs": {Name: "logs", Driver: "local"}},
	}
	cluster := func(name, id string, nodes ...string) {
		cv := &volume.ClusterVolume{ID: "cv-" + name}
		if id != "" {
			cv.Info = &volume.Info{VolumeID: id}
		}
		for _, n := range nodes {
			cv.PublishStatus = append(cv.PublishStatus, &volume.PublishStatus{NodeID: n, State: volume.StatePublished})
		}
		w.engine.vols[name] = &volume.Volume{Name: name, Driver: pluginName, ClusterVolume: cv}
	}
	cluster("pgdata", "vol-1", "n-here")
	cluster("cache", "vol-2", "n-far")
	cluster("idle", "vol-3")
	cluster("lost", "vol-4", "n-lost")
	cluster("gone", "vol-9")
	cluster("pending", "")

	sock := filepath.Join(dir, "p1", "csi.sock")
	if err := os.Mkdir(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(w.csi.serve))
	csi.RegisterControllerServer(srv, w.csi)
	csi.RegisterNodeServer(srv, w.csi)
	controller.RegisterDiagnostics(srv, w.csi)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	w.cli = &CLI{Stdout: &w.stdout, Stderr: &w.stderr, PluginsDir: dir,
		Engine: func() (Engine, error) { return w.engine, nil }}
	return w
}

// swarmNode is a node of Engine 28.2.2 with the plugin enabled: the
// leader, if it is the manager (whose address in the swarm is its
// manager address), or a worker.
func swarmNode(id, host, addr string) swarm.Node {
	n := swarm.Node{ID: id, Spec: swarm.NodeSpec{Role: swarm.NodeRoleWorker},
		Description: swarm.NodeDescription{Hostname: host, Engine: swarm.EngineDescription{EngineVersion: "28.2.2",
			Plugins: []swarm.PluginDescription{{Type: "csicontroller", Name: "swarm-csi:latest"}, {Type: "csinode", Name: "swarm-csi:latest"}}},
			CSIInfo: []swarm.NodeCSIInfo{{PluginName: "swarm-csi:latest", NodeID: host}}},
		Status: swarm.NodeStatus{State: swarm.NodeStateReady, Addr: addr}}
	if host == "manager" {
		n.Spec.Role = swarm.NodeRoleManager
		n.ManagerStatus = &swarm.ManagerStatus{Leader: true, Reachability: swarm.ReachabilityReachable, Addr: net.JoinHostPort(hereAddr, "2377")}
	}
	return n
}

// run runs swarm-csi ARGS (the options, then the command) and returns
// its exit status; its output is in w.stdout and w.stderr.
func (w *world) run(args ...string) int {
	w.t.Helper()
	w.stdout.Reset()
	w.stderr.Reset()
	fs := flag.NewFlagSet("swarm-csi", flag.ContinueOnError)
	w.cli.Options = Options{}
	w.cli.Options.Flags(fs)
	if err := fs.Parse(args); err != nil {
		w.t.Fatal(err)
	}
	return w.cli.Run(context.Background(), fs.Args())
}

// want runs a command that must exit with code and print want (on
// stdout when it succeeds, else on stderr); it returns the output.
func (w *world) want(code int, want string, args ...string) string {
	w.t.Helper()
	got := w.run(args...)
	out := w.stdout.String()
	if code != 0 {
		out = w.stderr.String()
	}
	if got != code || !strings.Contains(out, want) {
		w.t.Fatalf("swarm-csi %s: exit %d, want %d and %q\nstdout:\n%s\nstderr:\n%s",
			strings.Join(args, " "), got, code, want, &w.stdout, &w.stderr)
	}
	return out
}

// changes returns the calls that changed something since the last
// changes.
func (w *world) changes() []string {
	w.csi.mu.Lock()
	defer w.csi.mu.Unlock()
	c := w.csi.changes
	w.csi.changes = nil
	return c
}
