package node

import (
	"context"
	"testing"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
)

type usageNode struct {
	backend.Node
	u    backend.Usage
	path string
}

func (n *usageNode) Usage(_ context.Context, path string) (backend.Usage, error) {
	n.path = path
	return n.u, nil
}

// A backend that measures its volumes (a CephFS quota) is asked, in place
// of statfs.
func TestVolumeStatsFromTheBackend(t *testing.T) {
	be := &usageNode{u: backend.Usage{CapacityBytes: 64 << 20, UsedBytes: 80 << 20, Files: 7}}
	s := &Server{be: be}
	bytes, inodes, err := s.volumeStats(context.Background(), "/published/v")
	if err != nil {
		t.Fatal(err)
	}
	if be.path != "/published/v" || bytes.GetTotal() != 64<<20 || bytes.GetUsed() != 80<<20 || bytes.GetAvailable() != 0 {
		t.Errorf("bytes %v (asked for %q)", bytes, be.path)
	}
	if inodes.GetUsed() != 7 || inodes.GetTotal() != 0 || inodes.GetAvailable() != 0 {
		t.Errorf("inodes %v", inodes)
	}
	be.u.MaxFiles = 10
	if _, inodes, _ = s.volumeStats(context.Background(), "/p"); inodes.GetTotal() != 10 || inodes.GetAvailable() != 3 {
		t.Errorf("with a file limit: inodes %v", inodes)
	}
}
