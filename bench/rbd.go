package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// startCeph starts the throwaway Ceph cluster of an rbd run and returns
// the driver's arguments for it: rbd-fuse attachment, this machine's
// kernel having neither rbd nor nbd.
func startCeph(ctx context.Context) (*cephtest.Cluster, []string, error) {
	if why := cephtest.Missing(); why != "" {
		return nil, nil, fmt.Errorf("--backend rbd %s", why)
	}
	cl, err := cephtest.Start(ctx)
	if err != nil {
		return nil, nil, err
	}
	return cl, []string{
		"--backend", "rbd",
		"--rbd-monitors", cl.MonHost,
		"--rbd-pool", cl.Pool,
		"--rbd-user", cl.User,
		"--rbd-keyring", cl.Keyring,
		"--rbd-attach", "fuse",
		"--rbd-prefix", "bench",
	}, nil
}

// rawRBDLifecycle is one rbd volume done by hand, as the driver does it
// with rbd-fuse: rbd create, rbd-fuse exposing the image as a file, then
// the file's steps; and back, down to rbd rm.
func (b *bench) rawRBDLifecycle(name, fs string, size int64) *lifecycle {
	cl := b.ceph
	image := "raw-" + name
	fuse := filepath.Join(b.dir, "mnt", "fuse-"+name)
	dir := b.rawMount(name)
	auth := []string{"-c", cl.Conf, "--id", cl.User, "--keyring", cl.Keyring}
	with := func(tool string, args ...string) func(context.Context) error {
		return command(append(append([]string{tool}, auth...), args...)...)
	}
	mib := strconv.FormatInt((size+(1<<20)-1)>>20, 10)
	return &lifecycle{
		name: "raw rbd volume " + name,
		dirs: []string{fuse, dir},
		setup: append([]step{{
			name: "rbd create",
			do:   with("rbd", "create", "--size", mib+"M", cl.Pool+"/"+image),
			undo: &step{name: "rbd rm", do: with("rbd", "rm", "--no-progress", cl.Pool+"/"+image)},
		}, {
			// rbd-fuse mounts, then goes to the background.
			name: "rbd-fuse",
			do:   with("rbd-fuse", "-p", cl.Pool, "-r", image, fuse),
			undo: &step{name: "umount rbd-fuse", do: func(ctx context.Context) error {
				// The loop device detached a step before lets go of the
				// file a moment later: busy until then.
				for deadline := time.Now().Add(5 * time.Second); ; {
					_, err := execute(ctx, "umount", fuse)
					if err == nil {
						break
					}
					if !strings.Contains(err.Error(), "target is busy") || time.Now().After(deadline) {
						return err
					}
					time.Sleep(10 * time.Millisecond)
				}
				// Its watch on the image ends when it exits.
				return waitExit(ctx, "rbd-fuse", fuse)
			}},
		}}, fileSteps(filepath.Join(fuse, image), dir, fs)...),
	}
}

// waitExit waits until no process named comm has arg on its command line.
func waitExit(ctx context.Context, comm, arg string) error {
	for {
		pids, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		found := false
		for _, p := range pids {
			b, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			args := strings.Split(string(b), "\x00")
			if filepath.Base(args[0]) == comm && strings.Contains(string(b), "\x00"+arg+"\x00") {
				found = true
				break
			}
		}
		if !found {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s for %s still runs: %w", comm, arg, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
