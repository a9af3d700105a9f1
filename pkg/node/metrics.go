package node

import (
	"context"
	"time"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

// WithMetrics records the mounter's slow calls (mkfs, fsck, resize tools,
// mounts) as backend calls of the node.
func WithMetrics(m Mounter) Mounter { return timedMounter{m} }

type timedMounter struct{ Mounter }

func observe(call string, start time.Time, err error) {
	status := "ok"
	if err != nil {
		status = "error"
	}
	metrics.BackendCall("node", call, status, time.Since(start))
}

func (t timedMounter) FormatAndMount(device, target, fsType string, mkfsArgs, options []string) error {
	start := time.Now()
	err := t.Mounter.FormatAndMount(device, target, fsType, mkfsArgs, options)
	observe("format and mount "+fsType, start, err)
	return err
}

func (t timedMounter) Resize(device, mountPath, fsType string) error {
	start := time.Now()
	err := t.Mounter.Resize(device, mountPath, fsType)
	observe("grow mounted "+fsType, start, err)
	return err
}

func (t timedMounter) ResizeUnmounted(device, fsType string) (bool, error) {
	start := time.Now()
	done, err := t.Mounter.ResizeUnmounted(device, fsType)
	observe("grow unmounted "+fsType, start, err)
	return done, err
}

// VolumeUsage reports the filesystem of each volume mounted on this node,
// for the metrics (block volumes have none).
func (s *Server) VolumeUsage(context.Context) ([]metrics.Usage, error) {
	sts, err := s.state.list()
	if err != nil {
		return nil, err
	}
	var out []metrics.Usage
	for _, st := range sts {
		if st.Block || len(st.Targets) == 0 {
			continue
		}
		var fs unix.Statfs_t
		if err := unix.Statfs(st.StagingPath, &fs); err != nil {
			continue
		}
		if mounted, err := s.mounter.IsMountPoint(st.StagingPath); err != nil || !mounted {
			continue
		}
		bs := uint64(fs.Bsize)
		out = append(out, metrics.Usage{VolumeID: st.VolumeID,
			CapacityBytes: int64(fs.Blocks * bs), UsedBytes: int64((fs.Blocks - fs.Bfree) * bs),
			Inodes: int64(fs.Files), InodesUsed: int64(fs.Files - fs.Ffree)})
	}
	return out, nil
}
