package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// fakeBackend is an in-memory backend.Node.
type fakeBackend struct {
	mu       sync.Mutex
	volumes  map[string]*backend.Volume
	attached map[string]string // volume id -> device
	attachPC []map[string]string
	detaches int
	attachFn func(v *backend.Volume) error // optional hook
	blank    map[string]bool               // volume ids never written
}

func newFakeBackend(vols ...*backend.Volume) *fakeBackend {
	b := &fakeBackend{volumes: map[string]*backend.Volume{}, attached: map[string]string{}, blank: map[string]bool{}}
	for _, v := range vols {
		b.volumes[v.ID] = v
	}
	return b
}

func (b *fakeBackend) Register(context.Context, string) error { return nil }
func (b *fakeBackend) Health(context.Context) error           { return nil }

func (b *fakeBackend) Volume(_ context.Context, id string) (*backend.Volume, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.volumes[id]
	if !ok {
		return nil, csierr.NotFound("volume %q", id)
	}
	c := *v
	return &c, nil
}

func (b *fakeBackend) Attach(_ context.Context, v *backend.Volume, pc map[string]string) (string, error) {
	if b.attachFn != nil {
		if err := b.attachFn(v); err != nil {
			return "", err
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.attachPC = append(b.attachPC, pc)
	if dev, ok := b.attached[v.ID]; ok {
		return dev, nil
	}
	dev := fmt.Sprintf("/dev/fake%d", len(b.attached))
	b.attached[v.ID] = dev
	return dev, nil
}

func (b *fakeBackend) Detach(_ context.Context, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.detaches++
	delete(b.attached, id)
	return nil
}

func (b *fakeBackend) Device(_ context.Context, id string) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.attached[id], nil
}

func (b *fakeBackend) Blank(_ context.Context, v *backend.Volume) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.blank[v.ID], nil
}

func (b *fakeBackend) isAttached(id string) bool {
	dev, _ := b.Device(context.Background(), id)
	return dev != ""
}

// fakeMounter keeps a mount table in memory; paths are real directories.
type fakeMounter struct {
	mu        sync.Mutex
	mounts    map[string]fakeMount // target -> mount
	formats   int
	blankOnes int // formats without a probe
	formatted map[string]bool
	resizes   int
	needGrow  bool
	// mkfsRoot makes a format leave the target as mkfs leaves the root
	// of a new ext4: owned by root, mode 0755, with lost+found.
	mkfsRoot bool
	// failAfter makes the next FormatAndMount fail as a crash would:
	// after the format ("format") or after the mount too ("mount").
	failAfter string
}

type fakeMount struct {
	source  string
	options []string
}

func newFakeMounter() *fakeMounter {
	return &fakeMounter{mounts: map[string]fakeMount{}, formatted: map[string]bool{}}
}

func (m *fakeMounter) FormatAndMount(device, target, fsType string, mkfsArgs, options []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := os.Stat(target); err != nil {
		return err
	}
	if !m.formatted[device] { // like SafeFormatAndMount: format only a blank device
		m.formatted[device] = true
		m.formats++
		if m.mkfsRoot {
			if err := errors.Join(os.Chown(target, 0, 0), os.Chmod(target, 0o755), os.Mkdir(filepath.Join(target, "lost+found"), 0o700)); err != nil {
				return err
			}
		}
	}
	fail := m.failAfter
	m.failAfter = ""
	if fail == "format" {
		return errors.New("crashed after mkfs")
	}
	m.mounts[target] = fakeMount{source: device, options: options}
	if fail == "mount" {
		return errors.New("crashed after the mount")
	}
	return nil
}

func (m *fakeMounter) FormatBlankAndMount(device, target, fsType string, mkfsArgs, options []string) error {
	m.mu.Lock()
	if m.formatted[device] {
		m.mu.Unlock()
		return fmt.Errorf("%s holds a filesystem: formatting it as blank would destroy it", device)
	}
	m.blankOnes++
	m.mu.Unlock()
	return m.FormatAndMount(device, target, fsType, mkfsArgs, options)
}

func (m *fakeMounter) BindMount(source, target string, options []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := os.Stat(target); err != nil {
		return err
	}
	m.mounts[target] = fakeMount{source: source, options: options}
	return nil
}

func (m *fakeMounter) Unmount(target string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.mounts, target)
	return nil
}

func (m *fakeMounter) IsMountPoint(path string) (bool, error) {
	if _, err := os.Stat(path); err != nil {
		return false, fs.ErrNotExist
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.mounts[path]
	return ok, nil
}

func (m *fakeMounter) NeedsResize(string, string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.needGrow, nil
}

func (m *fakeMounter) ResizeUnmounted(string, string) (bool, error) { return false, nil }

func (m *fakeMounter) Resize(string, string, string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.resizes++
	m.needGrow = false
	return nil
}

func (m *fakeMounter) mounted(path string) (fakeMount, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mt, ok := m.mounts[path]
	return mt, ok
}
