package cephfs

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// fakeCluster plays a Ceph file system in memory: subvolumes with quotas,
// snapshots that keep a subvolume removed with them, clones that take a
// few polls to complete, and the records.
type fakeCluster struct {
	mu      sync.Mutex
	groups  map[string]bool
	subvols map[string]*fakeSubvol // group/name
	records map[string][]byte
	// cloneSteps is how many CloneState calls a clone stays in progress.
	cloneSteps int
	// failClone makes clones end failed.
	failClone bool
	// fail makes the named operation fail with the error.
	fail map[string]error
	// evicted lists the ids Evict was asked for; sessions the ids to find.
	evicted  []string
	sessions map[string]int
	calls    map[string]int
}

type fakeSubvol struct {
	quota    int64
	root     rootDir
	snaps    []string
	removed  bool // removed with its snapshots retained
	clone    cloneState
	polls    int
	created  time.Time
	files    map[string]string
	cloneSrc string
}

func newFake() *fakeCluster {
	return &fakeCluster{groups: map[string]bool{}, subvols: map[string]*fakeSubvol{}, records: map[string][]byte{},
		fail: map[string]error{}, sessions: map[string]int{}, calls: map[string]int{}}
}

func notFound(op, what string) error {
	return &Error{Op: op, Kind: KindNotFound, Err: fmt.Errorf("%s not found", what)}
}

func (f *fakeCluster) enter(op string) error {
	f.calls[op]++
	return f.fail[op]
}

func (f *fakeCluster) sv(op, group, name string) (*fakeSubvol, error) {
	s, ok := f.subvols[group+"/"+name]
	if !ok || s.removed {
		return nil, notFound(op, "subvolume "+name)
	}
	return s, nil
}

func (f *fakeCluster) CreateGroup(_ context.Context, group string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("CreateGroup"); err != nil {
		return err
	}
	f.groups[group] = true
	return nil
}

func (f *fakeCluster) Create(_ context.Context, group, name string, size int64, root rootDir) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Create"); err != nil {
		return err
	}
	if !f.groups[group] {
		return notFound("subvolume create", "group "+group)
	}
	if s, ok := f.subvols[group+"/"+name]; ok && !s.removed {
		return nil
	}
	f.subvols[group+"/"+name] = &fakeSubvol{quota: size, root: root, created: time.Now(), files: map[string]string{}}
	return nil
}

func (f *fakeCluster) Info(_ context.Context, group, name string) (*subvolInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Info"); err != nil {
		return nil, err
	}
	s, err := f.sv("subvolume info", group, name)
	if err != nil {
		return nil, err
	}
	if s.clone != "" && s.clone != cloneComplete {
		return nil, &Error{Op: "subvolume info", Kind: KindBusy, Err: fmt.Errorf("clone %s", s.clone)}
	}
	return &subvolInfo{Path: "/volumes/" + group + "/" + name + "/uuid", Quota: s.quota, Used: int64(len(s.files)), CreatedAt: s.created}, nil
}

func (f *fakeCluster) Resize(_ context.Context, group, name string, size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Resize"); err != nil {
		return err
	}
	s, err := f.sv("subvolume resize", group, name)
	if err != nil {
		return err
	}
	s.quota = size
	return nil
}

func (f *fakeCluster) Remove(_ context.Context, group, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Remove"); err != nil {
		return err
	}
	s, err := f.sv("subvolume rm", group, name)
	if err != nil {
		return err
	}
	if s.clone == clonePending || s.clone == cloneInProgress {
		return &Error{Op: "subvolume rm", Kind: KindBusy, Err: fmt.Errorf("clone in progress")}
	}
	if len(s.snaps) > 0 {
		s.removed = true
		return nil
	}
	delete(f.subvols, group+"/"+name)
	return nil
}

func (f *fakeCluster) List(_ context.Context, group string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for k, s := range f.subvols {
		if g, n, _ := strings.Cut(k, "/"); g == group && !s.removed {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

func (f *fakeCluster) SnapCreate(_ context.Context, group, name, snap string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("SnapCreate"); err != nil {
		return err
	}
	s, err := f.sv("snapshot create", group, name)
	if err != nil {
		return err
	}
	if slices.Contains(s.snaps, snap) {
		return &Error{Op: "snapshot create", Kind: KindExists, Err: fmt.Errorf("snapshot exists")}
	}
	s.snaps = append(s.snaps, snap)
	return nil
}

func (f *fakeCluster) SnapRemove(_ context.Context, group, name, snap string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("SnapRemove"); err != nil {
		return err
	}
	s, ok := f.subvols[group+"/"+name]
	if !ok || !slices.Contains(s.snaps, snap) {
		return notFound("snapshot rm", "snapshot "+snap)
	}
	for _, o := range f.subvols {
		if o.cloneSrc == group+"/"+name+"@"+snap && (o.clone == clonePending || o.clone == cloneInProgress) {
			return &Error{Op: "snapshot rm", Kind: KindBusy, Err: fmt.Errorf("snapshot has pending clones")}
		}
	}
	s.snaps = slices.DeleteFunc(s.snaps, func(x string) bool { return x == snap })
	if s.removed && len(s.snaps) == 0 {
		delete(f.subvols, group+"/"+name)
	}
	return nil
}

func (f *fakeCluster) Snapshots(_ context.Context, group, name string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.subvols[group+"/"+name]
	if !ok {
		return nil, notFound("snapshot ls", "subvolume "+name)
	}
	return slices.Clone(s.snaps), nil
}

func (f *fakeCluster) Clone(_ context.Context, group, name, snap, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Clone"); err != nil {
		return err
	}
	s, ok := f.subvols[group+"/"+name]
	if !ok || !slices.Contains(s.snaps, snap) {
		return notFound("snapshot clone", "snapshot "+snap)
	}
	if _, ok := f.subvols[group+"/"+target]; ok {
		return &Error{Op: "snapshot clone", Kind: KindExists, Err: fmt.Errorf("subvolume exists")}
	}
	files := map[string]string{}
	for k, v := range s.files {
		files[k] = v
	}
	f.subvols[group+"/"+target] = &fakeSubvol{quota: s.quota, root: s.root, clone: clonePending, created: time.Now(),
		files: files, cloneSrc: group + "/" + name + "@" + snap}
	return nil
}

func (f *fakeCluster) CloneState(_ context.Context, group, target string) (cloneState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("CloneState"); err != nil {
		return "", err
	}
	s, err := f.sv("clone status", group, target)
	if err != nil {
		return "", err
	}
	if s.clone == "" {
		return "", &Error{Op: "clone status", Kind: KindNotFound, Err: fmt.Errorf("not a clone")}
	}
	if s.clone == clonePending || s.clone == cloneInProgress {
		s.polls++
		switch {
		case s.polls > f.cloneSteps && f.failClone:
			s.clone = cloneFailed
		case s.polls > f.cloneSteps:
			s.clone = cloneComplete
		default:
			s.clone = cloneInProgress
		}
	}
	return s.clone, nil
}

func (f *fakeCluster) CancelClone(_ context.Context, group, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.sv("clone cancel", group, target)
	if err != nil {
		return err
	}
	if s.clone == clonePending || s.clone == cloneInProgress {
		s.clone = cloneCanceled
	}
	return nil
}

func (f *fakeCluster) Get(_ context.Context, key string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Get"); err != nil {
		return nil, err
	}
	v, ok := f.records[key]
	if !ok {
		return nil, notFound("read record", key)
	}
	return slices.Clone(v), nil
}

func (f *fakeCluster) Put(_ context.Context, key string, data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Put"); err != nil {
		return err
	}
	f.records[key] = slices.Clone(data)
	return nil
}

func (f *fakeCluster) Delete(_ context.Context, key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Delete"); err != nil {
		return err
	}
	delete(f.records, key)
	return nil
}

func (f *fakeCluster) Keys(_ context.Context, prefix string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for k := range f.records {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	return out, nil
}

func (f *fakeCluster) Evict(_ context.Context, id string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Evict"); err != nil {
		return 0, err
	}
	f.evicted = append(f.evicted, id)
	n := f.sessions[id]
	delete(f.sessions, id)
	return n, nil
}

func (f *fakeCluster) Available(context.Context) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Available"); err != nil {
		return 0, err
	}
	return 100 << 30, nil
}

// subvolume returns the fake's subvolume, nil if there is none.
func (f *fakeCluster) subvolume(group, name string) *fakeSubvol {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.subvols[group+"/"+name]
}
