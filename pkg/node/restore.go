package node

import (
	"context"
	"errors"
	"sync"

	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// Restore makes again the mounts of every volume this node has staged and
// published, where they were lost while the volume stayed in use. Docker
// unmounts everything a managed plugin mounted when the plugin is disabled
// or restarts, but Swarm still counts the volume as published on the node
// and sends no new NodeStage or NodePublish: without this, a new task would
// get the empty directory instead of its volume. Mounts that are still there
// are left as they are. Each volume is restored under its lock, so a CO call
// for it meanwhile gets Aborted and is retried; restoreParallel volumes at
// a time, since each waits mostly on the tools it runs (blkid, fsck). Errors
// are logged per volume and the first one returned.
func (s *Server) Restore(ctx context.Context) error {
	all, err := s.state.list()
	if err != nil {
		return err
	}
	errs := make([]error, len(all))
	var wg sync.WaitGroup
	sem := make(chan struct{}, restoreParallel)
	for i, st := range all {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if errs[i] = s.restore(ctx, st); errs[i] != nil {
				s.cfg.Log.Error("volume not restored", "volume", st.VolumeID, "error", errs[i])
				return
			}
			s.cfg.Log.Info("volume restored", "volume", st.VolumeID, "staging", st.StagingPath, "targets", st.Targets)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// restoreParallel is how many volumes Restore restores at once.
const restoreParallel = 8

func (s *Server) restore(ctx context.Context, st *staged) error {
	release, err := s.lock(st.VolumeID)
	if err != nil {
		return err
	}
	defer release()
	v, err := s.be.Volume(ctx, st.VolumeID)
	if errors.Is(err, csierr.ErrNotFound) {
		// The volume is gone: nothing to mount, nothing to keep.
		return s.state.remove(st.VolumeID)
	}
	if err != nil {
		return err
	}
	c := st.capability(v.FsType)
	if _, err := s.stage(ctx, v, st, st.StagingPath, c, nil); err != nil {
		return err
	}
	for _, t := range st.Targets {
		if err := s.publish(ctx, v.ID, v.Block, st.StagingPath, t, st.ReadOnly[t], st.MountFlags); err != nil {
			return err
		}
	}
	return nil
}
