package controller

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

const (
	miB = int64(1) << 20
	giB = int64(1) << 30
)

// fakeBackend is an in-memory backend.Controller with every optional
// feature (coreOnly hides them) that follows the interfaces' contract (idempotent by name, unknown ids ignored on delete,
// lists sorted by id). The optional hooks run before a call does its work;
// an error they return is the call's result. They let a test block a call
// on a channel or make it fail once.
type fakeBackend struct {
	mu        sync.Mutex
	info      backend.Info
	vols      map[string]*backend.Volume
	volNames  map[string]string
	snaps     map[string]*backend.Snapshot
	snapNames map[string]string
	nodes     map[string]bool
	abnormal  map[string]string // volume id -> condition message
	capacity  int64
	seq       int
	calls     map[string]int

	createVolumeFn   func(ctx context.Context, spec backend.VolumeSpec) error
	publishFn        func(ctx context.Context, id string, a backend.Attachment) error
	createSnapshotFn func(ctx context.Context, spec backend.SnapshotSpec) error
}

const fakeTopologyKey = "fake/zone"

func newFakeBackend(nodes ...string) *fakeBackend {
	f := &fakeBackend{
		info: backend.Info{
			Name:        "fake",
			Parameters:  []string{"pool"},
			DefaultSize: 1 * giB,
			Granularity: 1 * miB,
			MinSize:     16 * miB,
			Topology:    map[string]string{fakeTopologyKey: "a"},
		},
		vols:      map[string]*backend.Volume{},
		volNames:  map[string]string{},
		snaps:     map[string]*backend.Snapshot{},
		snapNames: map[string]string{},
		nodes:     map[string]bool{},
		abnormal:  map[string]string{},
		capacity:  100 * giB,
		calls:     map[string]int{},
	}
	for _, n := range nodes {
		f.nodes[n] = true
	}
	return f
}

var _ backend.Complete = (*fakeBackend)(nil)

// coreOnly hides the optional features of the backend it wraps: only the
// methods of backend.Controller are promoted.
type coreOnly struct{ backend.Controller }

func (f *fakeBackend) count(method string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[method]++
}

// callCount returns how often a method was called.
func (f *fakeBackend) callCount(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

func copyVolume(v *backend.Volume) *backend.Volume {
	c := *v
	c.Parameters = maps.Clone(v.Parameters)
	c.MutableParameters = maps.Clone(v.MutableParameters)
	c.Attachments = slices.Clone(v.Attachments)
	if v.Source != nil {
		s := *v.Source
		c.Source = &s
	}
	return &c
}

func copySnapshot(s *backend.Snapshot) *backend.Snapshot {
	c := *s
	c.GroupSources = slices.Clone(s.GroupSources)
	return &c
}

func (f *fakeBackend) Info() backend.Info { return f.info }

func (f *fakeBackend) CreateVolume(ctx context.Context, spec backend.VolumeSpec) (*backend.Volume, error) {
	f.count("CreateVolume")
	if f.createVolumeFn != nil {
		if err := f.createVolumeFn(ctx, spec); err != nil {
			return nil, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if id, ok := f.volNames[spec.Name]; ok {
		return copyVolume(f.vols[id]), nil
	}
	for k := range spec.Parameters {
		if !slices.Contains(f.info.Parameters, k) {
			return nil, csierr.Invalid("fake: parameter %q", k)
		}
	}
	if err := checkIOPS(spec.MutableParameters); err != nil {
		return nil, err
	}
	if src := spec.Source; src != nil {
		if _, ok := f.snaps[src.SnapshotID]; src.SnapshotID != "" && !ok {
			return nil, csierr.NotFound("fake: snapshot %s", src.SnapshotID)
		}
		if _, ok := f.vols[src.VolumeID]; src.VolumeID != "" && !ok {
			return nil, csierr.NotFound("fake: volume %s", src.VolumeID)
		}
	}
	f.seq++
	v := &backend.Volume{ID: fmt.Sprintf("vol-%04d", f.seq), VolumeSpec: spec, CreatedAt: time.Unix(int64(f.seq), 0).UTC()}
	v.Parameters = maps.Clone(spec.Parameters)
	v.MutableParameters = maps.Clone(spec.MutableParameters)
	f.vols[v.ID] = v
	f.volNames[spec.Name] = v.ID
	return copyVolume(v), nil
}

func (f *fakeBackend) CreateVolumeFrom(ctx context.Context, spec backend.VolumeSpec) (*backend.Volume, error) {
	f.count("CreateVolumeFrom")
	return f.CreateVolume(ctx, spec)
}

func (f *fakeBackend) DeleteVolume(_ context.Context, id string) error {
	f.count("DeleteVolume")
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vols[id]
	if !ok {
		return nil
	}
	if len(v.Attachments) > 0 {
		return fmt.Errorf("%w: fake: volume %s is published to %s", csierr.ErrInUse, id, v.Attachments[0].NodeID)
	}
	delete(f.vols, id)
	delete(f.volNames, v.Name)
	return nil
}

func (f *fakeBackend) Volume(_ context.Context, id string) (*backend.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vols[id]
	if !ok {
		return nil, csierr.NotFound("fake: volume %q", id)
	}
	return copyVolume(v), nil
}

func (f *fakeBackend) ListVolumes(context.Context) ([]*backend.Volume, error) {
	f.count("ListVolumes")
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*backend.Volume, 0, len(f.vols))
	for _, id := range slices.Sorted(maps.Keys(f.vols)) {
		out = append(out, copyVolume(f.vols[id]))
	}
	return out, nil
}

func (f *fakeBackend) Publish(ctx context.Context, cur *backend.Volume, a backend.Attachment) (map[string]string, error) {
	id := cur.ID
	f.count("Publish")
	if f.publishFn != nil {
		if err := f.publishFn(ctx, id, a); err != nil {
			return nil, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vols[id]
	if !ok {
		return nil, csierr.NotFound("fake: volume %q", id)
	}
	v.SetAttachment(a)
	return map[string]string{"fakeDevice": "/dev/fake-" + id}, nil
}

func (f *fakeBackend) Unpublish(_ context.Context, id, nodeID string) error {
	f.count("Unpublish")
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.vols[id]; ok {
		v.RemoveAttachment(nodeID)
	}
	return nil
}

func (f *fakeBackend) ExpandVolume(_ context.Context, id string, size int64) (int64, error) {
	f.count("ExpandVolume")
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vols[id]
	if !ok {
		return 0, csierr.NotFound("fake: volume %q", id)
	}
	if size > v.CapacityBytes {
		v.CapacityBytes = size
	}
	return v.CapacityBytes, nil
}

// checkIOPS is the fake backend's check of its one mutable parameter.
func checkIOPS(params map[string]string) error {
	for k, v := range params {
		if k != "iops" {
			return csierr.Invalid("fake: mutable parameter %q", k)
		}
		if n, err := strconv.Atoi(v); err != nil || n <= 0 {
			return csierr.Invalid("fake: iops=%q: want a positive number", v)
		}
	}
	return nil
}

func (f *fakeBackend) MutableParameters() []string { return []string{"iops"} }

func (f *fakeBackend) ModifyVolume(_ context.Context, id string, params map[string]string) error {
	f.count("ModifyVolume")
	if err := checkIOPS(params); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vols[id]
	if !ok {
		return csierr.NotFound("fake: volume %q", id)
	}
	if v.MutableParameters == nil {
		// Keep the caller's map, as a careless backend might: the test
		// checks that the controller passes a map of its own.
		v.MutableParameters = params
		return nil
	}
	maps.Copy(v.MutableParameters, params)
	return nil
}

func (f *fakeBackend) CreateSnapshot(ctx context.Context, spec backend.SnapshotSpec) (*backend.Snapshot, error) {
	f.count("CreateSnapshot")
	if f.createSnapshotFn != nil {
		if err := f.createSnapshotFn(ctx, spec); err != nil {
			return nil, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if id, ok := f.snapNames[spec.Name]; ok {
		return copySnapshot(f.snaps[id]), nil
	}
	v, ok := f.vols[spec.SourceVolumeID]
	if !ok {
		return nil, csierr.NotFound("fake: volume %q", spec.SourceVolumeID)
	}
	f.seq++
	s := &backend.Snapshot{ID: fmt.Sprintf("snap-%04d", f.seq), SnapshotSpec: spec, SizeBytes: v.CapacityBytes,
		CreatedAt: time.Unix(int64(f.seq), 0).UTC()}
	s.GroupSources = slices.Clone(spec.GroupSources)
	f.snaps[s.ID] = s
	f.snapNames[spec.Name] = s.ID
	return copySnapshot(s), nil
}

func (f *fakeBackend) DeleteSnapshot(_ context.Context, id string) error {
	f.count("DeleteSnapshot")
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.snaps[id]; ok {
		delete(f.snaps, id)
		delete(f.snapNames, s.Name)
	}
	return nil
}

func (f *fakeBackend) Snapshot(_ context.Context, id string) (*backend.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.snaps[id]
	if !ok {
		return nil, csierr.NotFound("fake: snapshot %q", id)
	}
	return copySnapshot(s), nil
}

func (f *fakeBackend) ListSnapshots(context.Context) ([]*backend.Snapshot, error) {
	f.count("ListSnapshots")
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*backend.Snapshot, 0, len(f.snaps))
	for _, id := range slices.Sorted(maps.Keys(f.snaps)) {
		out = append(out, copySnapshot(f.snaps[id]))
	}
	return out, nil
}

func (f *fakeBackend) Capacity(context.Context) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.capacity, nil
}

func (f *fakeBackend) NodeKnown(_ context.Context, nodeID string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nodes[nodeID], nil
}

func (f *fakeBackend) Condition(_ context.Context, v *backend.Volume) backend.Condition {
	f.mu.Lock()
	defer f.mu.Unlock()
	if msg, ok := f.abnormal[v.ID]; ok {
		return backend.Condition{Abnormal: true, Message: msg}
	}
	return backend.Condition{Message: "fine"}
}

// volume returns a copy of the stored volume, or nil.
func (f *fakeBackend) volume(id string) *backend.Volume {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.vols[id]; ok {
		return copyVolume(v)
	}
	return nil
}

// pagingBackend reads pages of volumes and snapshots and looks names up
// itself, as a backend whose listings are costly does: the controller then
// never lists them all.
type pagingBackend struct{ *fakeBackend }

var (
	_ backend.VolumePager   = pagingBackend{}
	_ backend.SnapshotPager = pagingBackend{}
	_ backend.NameFinder    = pagingBackend{}
)

func (p pagingBackend) VolumesPage(_ context.Context, after string, max int) ([]*backend.Volume, bool, error) {
	p.count("VolumesPage")
	p.mu.Lock()
	defer p.mu.Unlock()
	return cutPage(p.vols, copyVolume, after, max, nil)
}

func (p pagingBackend) SnapshotsPage(_ context.Context, after string, max int, keep func(*backend.Snapshot) bool) ([]*backend.Snapshot, bool, error) {
	p.count("SnapshotsPage")
	p.mu.Lock()
	defer p.mu.Unlock()
	return cutPage(p.snaps, copySnapshot, after, max, keep)
}

// cutPage is a page of items by id, as VolumePager and SnapshotPager
// define it.
func cutPage[T any](items map[string]*T, copyOf func(*T) *T, after string, max int, keep func(*T) bool) ([]*T, bool, error) {
	var out []*T
	for _, id := range slices.Sorted(maps.Keys(items)) {
		if id <= after || keep != nil && !keep(items[id]) {
			continue
		}
		if max > 0 && len(out) == max {
			return out, true, nil
		}
		out = append(out, copyOf(items[id]))
	}
	return out, false, nil
}

func (p pagingBackend) VolumeNamed(_ context.Context, name string) (*backend.Volume, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v, ok := p.vols[p.volNames[name]]; ok {
		return copyVolume(v), nil
	}
	return nil, csierr.NotFound("fake: no volume named %q", name)
}

func (p pagingBackend) SnapshotNamed(_ context.Context, name string) (*backend.Snapshot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if sn, ok := p.snaps[p.snapNames[name]]; ok {
		return copySnapshot(sn), nil
	}
	return nil, csierr.NotFound("fake: no snapshot named %q", name)
}
