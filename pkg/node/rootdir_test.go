package node

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend"
)

// needChown ends a test that gives files away to other users: only root can.
func needChown(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Require(t, "needs root to change owners")
	}
}

func ownedVolume() *backend.Volume {
	v := mountVolume()
	v.Root = &backend.RootDir{UID: 1000, GID: 1001, Mode: 0o2750}
	return v
}

// wantRoot checks the owner and mode of the directory at path.
func wantRoot(t *testing.T, path string, want backend.RootDir) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if got := (backend.RootDir{UID: st.Uid, GID: st.Gid, Mode: st.Mode & 0o7777}); got != want {
		t.Fatalf("%s is %d:%d %#o, want %d:%d %#o", path, got.UID, got.GID, got.Mode, want.UID, want.GID, want.Mode)
	}
}

func TestStageSetsRootOwnerOnceAtFormat(t *testing.T) {
	needChown(t)
	for _, blank := range []bool{false, true} {
		h := newHarness(t, ownedVolume())
		h.m.mkfsRoot = true
		h.be.blank[volID] = blank
		c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
		h.must(h.stage(c, nil))
		wantRoot(t, h.staging, *ownedVolume().Root)

		// The user makes the root their own: neither a repeated stage nor
		// one after a release undoes it.
		h.must(os.Chmod(h.staging, 0o700))
		h.must(os.Chown(h.staging, 2000, 2000))
		h.must(h.stage(c, nil))
		h.be.blank[volID] = false
		h.must(h.unstage())
		h.must(h.stage(c, nil))
		wantRoot(t, h.staging, backend.RootDir{UID: 2000, GID: 2000, Mode: 0o700})

		// Nor does a stage of a root the user gave back to root but filled.
		h.must(os.Chown(h.staging, 0, 0))
		h.must(os.Chmod(h.staging, 0o755))
		h.must(os.WriteFile(filepath.Join(h.staging, "data"), nil, 0o644))
		h.must(h.unstage())
		h.must(h.stage(c, nil))
		wantRoot(t, h.staging, backend.FreshRoot)
		if h.m.formats != 1 {
			t.Fatalf("formatted %d times, want once", h.m.formats)
		}
	}
}

// A crash between mkfs and the chown, before or after the mount, leaves a
// root as mkfs made it: the retried stage completes it.
func TestStageSetsRootOwnerAfterCrash(t *testing.T) {
	needChown(t)
	for _, crash := range []string{"format", "mount"} {
		h := newHarness(t, ownedVolume())
		h.m.mkfsRoot = true
		h.m.failAfter = crash
		c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
		if err := h.stage(c, nil); err == nil {
			t.Fatalf("crash after %s: the stage succeeded", crash)
		}
		wantRoot(t, h.staging, backend.FreshRoot)
		h.must(h.stage(c, nil))
		wantRoot(t, h.staging, *ownedVolume().Root)
		if h.m.formats != 1 {
			t.Fatalf("crash after %s: formatted %d times, want once", crash, h.m.formats)
		}
	}
}

// A volume without the parameters keeps the root as mkfs makes it.
func TestStageLeavesRootWithoutOwner(t *testing.T) {
	needChown(t)
	h := newHarness(t, mountVolume())
	h.m.mkfsRoot = true
	h.must(h.stage(mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), nil))
	wantRoot(t, h.staging, backend.FreshRoot)
}
