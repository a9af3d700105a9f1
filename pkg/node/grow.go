package node

import (
	"context"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/blockdev"
)

// WatchGrowth grows, every interval until ctx ends, each volume in use on
// this node whose volume has grown: the device is made to see the new
// size and a mounted filesystem grows online. Swarm never calls
// NodeExpandVolume, so without this a volume grown while in use (swarm-csi
// volume expand) would grow only at its next stage.
func (s *Server) WatchGrowth(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	failed := growFailures{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.growAll(ctx, failed)
		}
	}
}

// growFailures remembers, by volume id, the device size at which growing
// the filesystem failed, so that a failure that will not go away by itself
// (ext4 without CAP_SYS_RESOURCE) is logged and tried once per size.
type growFailures map[string]int64

func (s *Server) growAll(ctx context.Context, failed growFailures) {
	sts, err := s.state.list()
	if err != nil {
		s.cfg.Log.Warn("growth check: cannot read the node state", "error", err)
		return
	}
	for _, st := range sts {
		if ctx.Err() != nil {
			return
		}
		s.growOne(ctx, st, failed)
	}
}

// growOne brings one volume to its size. What it needs is found without
// the volume's lock (reads only), so that the check never holds up a CO's
// call; the lock is taken only to grow, and a volume that is busy then,
// or was released meanwhile, waits for the next round.
func (s *Server) growOne(ctx context.Context, st *staged, failed growFailures) {
	dev, err := s.be.Device(ctx, st.VolumeID)
	if err != nil || dev == "" {
		return
	}
	v, err := s.be.Volume(ctx, st.VolumeID)
	if err != nil {
		return
	}
	size, err := blockdev.Size(dev)
	if err != nil {
		return
	}
	refresh := size < v.CapacityBytes
	if !refresh && !s.fsNeedsGrowth(dev, v.ID, v.FsType, v.Block, st.StagingPath, size, failed) {
		return
	}
	release, err := s.lock(st.VolumeID)
	if err != nil {
		return
	}
	defer release()
	if cur, err := s.state.load(st.VolumeID); err != nil || cur == nil || cur.StagingPath != st.StagingPath {
		return // released or moved meanwhile
	}
	if refresh {
		// Attach on an attached volume refreshes the device's size.
		if dev, err = s.be.Attach(ctx, v, nil); err != nil {
			s.cfg.Log.Warn("growth check: device not refreshed", "volume", v.ID, "error", err)
			return
		}
		if size, err = blockdev.Size(dev); err != nil {
			return
		}
		s.cfg.Log.Info("volume grown: device refreshed", "volume", v.ID, "device", dev, "bytes", size)
		if !s.fsNeedsGrowth(dev, v.ID, v.FsType, v.Block, st.StagingPath, size, failed) {
			return
		}
	}
	if err := s.grow(dev, st.StagingPath, v.FsType); err != nil {
		failed[v.ID] = size
		s.cfg.Log.Warn("volume grown, its filesystem not: it grows at the volume's next stage", "volume", v.ID, "error", err)
		return
	}
	s.cfg.Log.Info("volume grown: filesystem grown online", "volume", v.ID, "bytes", size)
}

// fsNeedsGrowth reports whether a mounted filesystem is smaller than its
// device of size bytes, and was not tried at that size already.
func (s *Server) fsNeedsGrowth(dev, id, fsType string, block bool, staging string, size int64, failed growFailures) bool {
	if block {
		return false
	}
	if mounted, err := s.mounter.IsMountPoint(staging); err != nil || !mounted {
		return false
	}
	if failed[id] == size {
		return false
	}
	need, err := s.mounter.NeedsResize(dev, fsType)
	return err == nil && need
}
