package node

import (
	"context"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/blockdev"
	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

// WithMetrics records the mounter's slow calls (mkfs, fsck, resize tools,
// mounts) as backend calls of the node.
func WithMetrics(m Mounter) Mounter { return timedMounter{m} }

type timedMounter struct{ Mounter }

func observe(call string, start time.Time, err error) { metrics.Observe("node", call, start, err) }

func (t timedMounter) FormatAndMount(device, target, fsType string, mkfsArgs, options []string) error {
	start := time.Now()
	err := t.Mounter.FormatAndMount(device, target, fsType, mkfsArgs, options)
	observe("format and mount "+fsType, start, err)
	return err
}

func (t timedMounter) FormatBlankAndMount(device, target, fsType string, mkfsArgs, options []string) error {
	start := time.Now()
	err := t.Mounter.FormatBlankAndMount(device, target, fsType, mkfsArgs, options)
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

// VolumeUsage reports each volume published on this node, for the
// metrics: its filesystem's size and use (a block volume's size), or why
// it is abnormal (its device or a mount gone), as NodeGetVolumeHealth.
func (s *Server) VolumeUsage(ctx context.Context) ([]metrics.Usage, error) {
	sts, err := s.state.list()
	if err != nil {
		return nil, err
	}
	var out []metrics.Usage
	for _, st := range sts {
		if len(st.Targets) == 0 {
			continue
		}
		u := metrics.Usage{VolumeID: st.VolumeID, Block: st.Block}
		paths := st.Targets
		if !st.Block {
			paths = append([]string{st.StagingPath}, paths...)
		}
		pr := s.probe(ctx, st.VolumeID, paths...)
		switch {
		case pr.problem != nil:
			u.Abnormal = pr.problem.GetReason()
		case st.Block:
			if u.CapacityBytes, err = blockdev.Size(pr.device); err != nil {
				u.Abnormal = "DeviceUnreadable"
			}
		default:
			bytes, inodes, err := s.volumeStats(ctx, st.StagingPath)
			if err != nil {
				u.Abnormal = "PathUnreadable"
				break
			}
			u.CapacityBytes, u.UsedBytes, u.AvailableBytes = bytes.GetTotal(), bytes.GetUsed(), bytes.GetAvailable()
			u.Inodes, u.InodesUsed = inodes.GetTotal(), inodes.GetUsed()
		}
		out = append(out, u)
	}
	return out, nil
}
