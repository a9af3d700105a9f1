// Command bench prints swarm-csi's figures under a real single-node Swarm
// (see e2e/README.md): the time from `docker service create` to the task
// running with a fresh cluster volume against the same service without a
// volume (p50 over 10 runs each, interleaved), the plugin's memory (RSS of
// its swarm-csi process) idle and with 20 volumes in use, and the size of
// the plugin's rootfs. It prints figures; it asserts nothing.
//
//	go run ./e2e/bench [-runs 10] [-volumes 20]
package main

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
)

func main() {
	harness.ReaperMain()
	runs := flag.Int("runs", 10, "service starts measured with and without a volume")
	volumes := flag.Int("volumes", 20, "volumes in use for the memory figure")
	flag.Parse()
	if r := harness.SkipReason(); r != "" {
		log.Fatal(r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	logf := func(format string, args ...any) { log.Printf(format, args...) }
	c, err := harness.Start(ctx, logf, harness.Options{Nodes: 1})
	if err != nil {
		log.Fatal(err)
	}
	err = bench(ctx, c, *runs, *volumes)
	if serr := c.Stop(); serr != nil {
		log.Printf("teardown: %v", serr)
		if err == nil {
			err = serr
		}
	}
	if err != nil {
		log.Fatal(err)
	}
}

type runner struct {
	ctx context.Context
	n   *harness.Node
}

func (r *runner) docker(args ...string) (string, error) { return r.n.Docker(r.ctx, args...) }

// waitRunning polls the service's tasks until one runs.
func (r *runner) waitRunning(service string) error {
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		out, err := r.docker("service", "ps", "--format", "{{.CurrentState}}", service)
		if err == nil && strings.HasPrefix(strings.TrimSpace(out), "Running") {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, _ := r.docker("service", "ps", "--no-trunc", service)
	return fmt.Errorf("service %s not running after 3 minutes:\n%s", service, out)
}

func (r *runner) waitNoContainers(service string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		out, err := r.docker("ps", "-aq", "--filter", "label=com.docker.swarm.service.name="+service)
		if err == nil && strings.TrimSpace(out) == "" {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("containers of %s still there after 2 minutes", service)
}

func (r *runner) removeVolume(name string) error {
	if _, err := r.docker("volume", "update", "--availability", "drain", name); err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := r.docker("volume", "rm", name)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

const script = `trap "exit 0" TERM; sleep 1000000 & wait`

// serviceStart times docker service create until the task runs, then
// removes the service.
func (r *runner) serviceStart(name string, mounts ...string) (time.Duration, error) {
	args := []string{"service", "create", "--detach", "--name", name, "--no-resolve-image", "--stop-grace-period", "5s"}
	for _, m := range mounts {
		args = append(args, "--mount", m)
	}
	args = append(args, harness.BusyboxImage, "sh", "-c", script)
	start := time.Now()
	if _, err := r.docker(args...); err != nil {
		return 0, err
	}
	if err := r.waitRunning(name); err != nil {
		return 0, err
	}
	d := time.Since(start)
	if _, err := r.docker("service", "rm", name); err != nil {
		return 0, err
	}
	return d, r.waitNoContainers(name)
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p*float64(len(s)-1) + 0.5)
	return s[i]
}

func bench(ctx context.Context, c *harness.Cluster, runs, volumes int) error {
	r := &runner{ctx: ctx, n: c.Manager()}
	pid, err := r.n.PluginPID(ctx)
	if err != nil {
		return err
	}
	fresh, err := harness.RSS(pid)
	if err != nil {
		return err
	}
	// Warm-up: the first container start pays for caches.
	if _, err := r.serviceStart("warmup"); err != nil {
		return err
	}

	var plain, withVol, create []time.Duration
	for i := 0; i < runs; i++ {
		d, err := r.serviceStart(fmt.Sprintf("plain-%d", i))
		if err != nil {
			return err
		}
		plain = append(plain, d)

		vol := fmt.Sprintf("bench-%d", i)
		start := time.Now()
		if _, err := r.docker("volume", "create", "--driver", harness.PluginName, "--type", "mount", vol); err != nil {
			return err
		}
		for {
			v, _, err := r.n.InspectVolume(ctx, vol)
			if err != nil {
				return err
			}
			if v.VolumeID() != "" {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		create = append(create, time.Since(start))
		d, err = r.serviceStart(fmt.Sprintf("vol-%d", i), "type=cluster,src="+vol+",dst=/data")
		if err != nil {
			return err
		}
		withVol = append(withVol, d)
		if err := r.removeVolume(vol); err != nil {
			return err
		}
		log.Printf("run %d: without volume %s, with a fresh volume %s (volume created in %s)", i+1,
			plain[i].Round(time.Millisecond), withVol[i].Round(time.Millisecond), create[i].Round(time.Millisecond))
	}

	idle, err := harness.RSS(pid)
	if err != nil {
		return err
	}
	var mounts []string
	for i := 0; i < volumes; i++ {
		vol := fmt.Sprintf("mem-%d", i)
		if _, err := r.docker("volume", "create", "--driver", harness.PluginName, "--type", "mount", vol); err != nil {
			return err
		}
		mounts = append(mounts, fmt.Sprintf("--mount=type=cluster,src=%s,dst=/data%d", vol, i))
	}
	args := append([]string{"service", "create", "--detach", "--name", "mem", "--no-resolve-image", "--stop-grace-period", "5s"}, mounts...)
	args = append(args, harness.BusyboxImage, "sh", "-c", script)
	memStart := time.Now()
	if _, err := r.docker(args...); err != nil {
		return err
	}
	if err := r.waitRunning("mem"); err != nil {
		return err
	}
	memUp := time.Since(memStart)
	time.Sleep(2 * time.Second)
	busy, err := harness.RSS(pid)
	if err != nil {
		return err
	}
	if _, err := r.docker("service", "rm", "mem"); err != nil {
		return err
	}
	if err := r.waitNoContainers("mem"); err != nil {
		return err
	}
	for i := 0; i < volumes; i++ {
		if err := r.removeVolume(fmt.Sprintf("mem-%d", i)); err != nil {
			return err
		}
	}

	apparent, blocks, files := dirSize(filepath.Join(c.Tools.PluginDir, "rootfs"))
	const mib = 1 << 20
	p50p, p50v := percentile(plain, 0.5), percentile(withVol, 0.5)
	fmt.Printf("\nswarm-csi under a single-node Swarm (dockerd %s, %d runs each, interleaved)\n\n", harness.DockerdVersion, runs)
	fmt.Printf("| service create -> task running | p50 | p90 | min | max |\n|---|---|---|---|---|\n")
	row := func(name string, ds []time.Duration) {
		fmt.Printf("| %s | %s | %s | %s | %s |\n", name, percentile(ds, 0.5).Round(time.Millisecond), percentile(ds, 0.9).Round(time.Millisecond),
			percentile(ds, 0).Round(time.Millisecond), percentile(ds, 1).Round(time.Millisecond))
	}
	row("no volume", plain)
	row("fresh cluster volume (1 GiB ext4)", withVol)
	row("(docker volume create -> created)", create)
	fmt.Printf("\nextra time with a fresh volume, p50: %s (target: at most 2s)\n", (p50v - p50p).Round(time.Millisecond))
	fmt.Printf("plugin RSS (swarm-csi pid %d): just started %.1f MiB; idle after the runs above %.1f MiB; with %d volumes in use %.1f MiB (one service mounting all %d, running %s after create)\n",
		pid, float64(fresh)/mib, float64(idle)/mib, volumes, float64(busy)/mib, volumes, memUp.Round(time.Millisecond))
	fmt.Printf("plugin rootfs: %.1f MiB in %d files (%.1f MiB on disk)\n", float64(apparent)/mib, files, float64(blocks)/mib)
	return nil
}

// dirSize returns the apparent size, the disk usage and the number of
// regular files under dir.
func dirSize(dir string) (apparent, disk int64, files int) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		apparent += fi.Size()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			disk += st.Blocks * 512
		} else {
			disk += fi.Size()
		}
		files++
		return nil
	})
	return
}
