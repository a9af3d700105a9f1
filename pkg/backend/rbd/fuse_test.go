package rbd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The fuse mode's paths come from parsed ids only: <state>/fuse/<node
// tag>/<pool>/<image>, and a loop tag that fits lo_file_name.
func TestFusePaths(t *testing.T) {
	b := newAttachBackend(t, &fakeRunner{})
	n, err := b.ForNode("node-1", ModeFuse)
	if err != nil {
		t.Fatal(err)
	}
	f := n.att.(*fuseAttacher)
	hash := nameHash("v")
	ref, _, ok := b.names.parseVolumeID("rbd/" + b.names.volumeImage(hash))
	if !ok {
		t.Fatal("id does not parse")
	}
	mp := f.mountPoint(ref)
	if !strings.HasPrefix(mp, filepath.Join(b.cfg.StateDir, "fuse")+"/") || filepath.Clean(mp) != mp {
		t.Fatalf("mount point %s", mp)
	}
	if f.file(ref) != filepath.Join(mp, ref.image) {
		t.Fatalf("file %s", f.file(ref))
	}
	if tag := f.loopTag(hash); len(tag) > 63 {
		t.Fatalf("loop tag %q is longer than lo_file_name", tag)
	}
	other, _ := b.ForNode("node-2", ModeFuse)
	if other.att.(*fuseAttacher).mountPoint(ref) == mp {
		t.Fatal("two nodes on one machine share a mount point")
	}
	// Not mounted: no device, and detach has nothing to do.
	if dev, err := n.Device(t.Context(), "rbd/"+b.names.volumeImage(hash)); dev != "" || err != nil {
		t.Fatalf("Device = %q, %v", dev, err)
	}
	if err := n.Detach(t.Context(), "rbd/"+b.names.volumeImage(hash)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(mp); !os.IsNotExist(err) {
		t.Fatalf("detach left %s: %v", mp, err)
	}
}
