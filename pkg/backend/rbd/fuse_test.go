package rbd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
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

// The fuse mode's loop device keeps the page cache unless one node may
// write the image while another reads it.
func TestFuseDirectIO(t *testing.T) {
	for mode, want := range map[string]bool{
		"SINGLE_NODE_WRITER":        false,
		"SINGLE_NODE_READER_ONLY":   false,
		"SINGLE_NODE_SINGLE_WRITER": false,
		"SINGLE_NODE_MULTI_WRITER":  false,
		"MULTI_NODE_READER_ONLY":    false,
		"MULTI_NODE_SINGLE_WRITER":  true,
		"MULTI_NODE_MULTI_WRITER":   true,
		"":                          true, // unknown: the safe choice
	} {
		for _, block := range []bool{false, true} {
			v := &backend.Volume{VolumeSpec: backend.VolumeSpec{AccessMode: mode, Block: block}}
			if got := directIO(v); got != want {
				t.Errorf("%q (block %v): direct I/O %v, want %v", mode, block, got, want)
			}
		}
	}
}
