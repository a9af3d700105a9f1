package node

import (
	"context"
	"sync"
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
	failed := &growFailures{seen: map[string]int64{}}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.growAll(ctx, failed)
		}
	}
}

// growFailures remembers, by volume, the device size at which growing the
// filesystem failed, so that a failure that will not go away by itself
// (ext4 without CAP_SYS_RESOURCE) is logged and tried once per size.
type growFailures struct {
	mu   sync.Mutex
	seen map[string]int64
}

func (s *Server) growAll(ctx context.Context, failed *growFailures) {
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

// growOne brings one volume to its size; it does nothing to a volume that
// is released, busy (its lock is taken: next round) or the right size.
func (s *Server) growOne(ctx context.Context, st *staged, failed *growFailures) {
	release, err := s.lock(st.VolumeID)
	if err != nil {
		return
	}
	defer release()
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
	if size < v.CapacityBytes {
		// Attach on an attached volume refreshes the device's size.
		if dev, err = s.be.Attach(ctx, v, nil); err != nil {
			s.cfg.Log.Warn("growth check: device not refreshed", "volume", v.ID, "error", err)
			return
		}
		if size, err = blockdev.Size(dev); err != nil {
			return
		}
		s.cfg.Log.Info("volume grown: device refreshed", "volume", v.ID, "device", dev, "bytes", size)
	}
	if v.Block {
		return
	}
	if mounted, err := s.mounter.IsMountPoint(st.StagingPath); err != nil || !mounted {
		return
	}
	failed.mu.Lock()
	tried := failed.seen[v.ID] == size
	failed.mu.Unlock()
	if tried {
		return
	}
	need, err := s.mounter.NeedsResize(dev, v.FsType)
	if err != nil || !need {
		return
	}
	if err := s.grow(dev, st.StagingPath, v.FsType); err != nil {
		failed.mu.Lock()
		failed.seen[v.ID] = size
		failed.mu.Unlock()
		s.cfg.Log.Warn("volume grown, its filesystem not: it grows at the volume's next stage", "volume", v.ID, "error", err)
		return
	}
	s.cfg.Log.Info("volume grown: filesystem grown online", "volume", v.ID, "bytes", size)
}
