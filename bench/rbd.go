package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// startCeph starts the throwaway Ceph cluster of an rbd run and returns
// the driver's arguments for it: rbd-fuse attachment, this machine's
// kernel having neither rbd nor nbd, and metrics served at metricsAddr,
// where the bench counts the driver's calls to Ceph.
func startCeph(ctx context.Context) (cl *cephtest.Cluster, args []string, metricsAddr string, err error) {
	if why := cephtest.Missing(); why != "" {
		return nil, nil, "", fmt.Errorf("--backend rbd %s", why)
	}
	if metricsAddr, err = freeAddr(); err != nil {
		return nil, nil, "", err
	}
	if cl, err = cephtest.Start(ctx); err != nil {
		return nil, nil, "", err
	}
	return cl, []string{
		"--backend", "rbd",
		"--rbd-monitors", cl.MonHost,
		"--rbd-pool", cl.Pool,
		"--rbd-user", cl.User,
		"--rbd-keyring", cl.Keyring,
		"--rbd-attach", "fuse",
		"--rbd-prefix", "bench",
		"--metrics-addr", metricsAddr,
	}, metricsAddr, nil
}

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// backendCalls reads from the driver's metrics how many calls to Ceph it
// has made so far, by operation; nil when the run serves no metrics.
func (b *bench) backendCalls(ctx context.Context) (map[string]float64, error) {
	if b.metrics == "" {
		return nil, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.metrics+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("driver metrics: %w", err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("driver metrics: %w", err)
	}
	calls := map[string]float64{}
	if f := families["swarm_csi_backend_call_duration_seconds"]; f != nil {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["backend"] == "rbd" {
				calls[labels["call"]] += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return calls, nil
}

// attachRSS sums the resident memory of the rbd-fuse processes working
// under dir.
func attachRSS(dir string) (n int, kib int64, err error) {
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range cmdlines {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if filepath.Base(args[0]) != "rbd-fuse" || !strings.Contains(string(b), dir+"/") {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		r, err := readRSS(pid, 0)
		if err != nil {
			continue // gone meanwhile
		}
		n, kib = n+1, kib+r.VmRSSKiB
	}
	return n, kib, nil
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
