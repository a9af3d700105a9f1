package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// A shared filesystem mounted by a FUSE daemon (ceph-fuse) dies with its
// daemon: the staging path, and every bind mount of it, then answer
// ENOTCONN ("Transport endpoint is not connected") while still mounted.
// Such a mount is reported abnormal, and mounted again by the next
// publish or by WatchMounts: the backend's Mount replaces the staging
// mount, and each dead target is detached and bound again, so that a
// container started afterwards gets a live volume.

// MountCheckInterval is how often WatchMounts looks for dead mounts.
const MountCheckInterval = 5 * time.Second

// deadMount reports whether path is a mount whose filesystem no longer
// answers.
func deadMount(path string) error {
	var st unix.Statfs_t
	err := unix.Statfs(path, &st)
	if errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ECONNABORTED) {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// clearDeadMount detaches a dead mount at path, if there is one.
func clearDeadMount(path string) error {
	if deadMount(path) == nil {
		return nil
	}
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("detach the dead mount at %s: %w", path, err)
	}
	return nil
}

// WatchMounts mounts again, every interval until ctx ends, the volumes of
// a shared filesystem backend whose staging or published mount is dead.
func (s *Server) WatchMounts(ctx context.Context, every time.Duration) {
	if s.filesystem() == nil {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.healAll(ctx)
		}
	}
}

func (s *Server) healAll(ctx context.Context) {
	sts, err := s.state.list()
	if err != nil {
		s.cfg.Log.Warn("mount check: cannot read the node state", "error", err)
		return
	}
	for _, st := range sts {
		if ctx.Err() != nil {
			return
		}
		dead := deadMount(st.StagingPath)
		for _, t := range st.Targets {
			if dead == nil {
				dead = deadMount(t)
			}
		}
		if dead == nil || len(st.Targets) == 0 {
			continue
		}
		s.cfg.Log.Warn("dead mount: mounting the volume again", "volume", st.VolumeID, "error", dead)
		if err := s.restore(ctx, st); err != nil {
			s.cfg.Log.Error("volume not mounted again", "volume", st.VolumeID, "error", err)
			continue
		}
		s.cfg.Log.Info("volume mounted again", "volume", st.VolumeID, "staging", st.StagingPath, "targets", st.Targets)
	}
}
