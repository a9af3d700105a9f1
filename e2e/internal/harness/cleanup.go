package harness

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// cleanup removes everything a run recorded: it leaves the swarm, stops
// the daemons (SIGTERM, then SIGKILL), kills what they left running,
// unmounts everything under the run's directories (the plugins' propagated
// mounts included), detaches the loop devices backed by the run's files,
// deletes its network namespaces and its directories, and then checks that
// nothing is left.
func cleanup(r *Record, logf Logf) error {
	var errs []error
	// Leave the swarm: workers first, the manager last.
	for i := len(r.Sockets) - 1; i >= 0; i-- {
		sock := r.Sockets[i]
		if _, err := os.Stat(sock); err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, err := runCmd(ctx, baseEnv("DOCKER_CONFIG="+filepath.Join(filepath.Dir(sock), "cli")), "", DockerCLI, "-H", "unix://"+sock, "swarm", "leave", "--force")
		cancel()
		if err != nil && !strings.Contains(out, "not part of a swarm") {
			logf("cleanup: swarm leave on %s: %v", sock, err)
		}
	}
	stopDaemons(r.Daemons, 30*time.Second, logf)
	if left := killOurs(r, logf); len(left) > 0 {
		errs = append(errs, fmt.Errorf("processes still running: %s", strings.Join(left, "; ")))
	}
	if err := unmountUnder(r, logf); err != nil {
		errs = append(errs, err)
	}
	ours := ourFiles(r)
	ids := containerIDs(r)
	if err := detachLoops(ours, logf); err != nil {
		errs = append(errs, err)
	}
	removeCgroups(r, logf)
	if err := removeRunFiles(r, logf); err != nil {
		errs = append(errs, err)
	}
	for _, ns := range r.NetNS {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %v: %s", ns, err, out))
		}
	}
	// Never remove a directory with something still mounted below it:
	// RemoveAll would delete through the mount.
	if ms := mountsUnder(r); len(ms) > 0 {
		errs = append(errs, fmt.Errorf("not removing %v: still mounted: %v", r.Roots, ms))
	} else {
		for _, root := range r.Roots {
			if err := os.RemoveAll(root); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if left := leftovers(r, ours, ids); len(left) > 0 {
		errs = append(errs, fmt.Errorf("left behind:\n  %s", strings.Join(left, "\n  ")))
	}
	return errors.Join(errs...)
}

// stopDaemons sends SIGTERM to the recorded daemons, and SIGKILL to those
// still running after the grace period.
func stopDaemons(ds []Proc, grace time.Duration, logf Logf) {
	var live []Proc
	for _, d := range ds {
		if d.Alive() {
			live = append(live, d)
			syscall.Kill(d.Pid, syscall.SIGTERM)
		}
	}
	deadline := time.Now().Add(grace)
	for _, d := range live {
		for d.Alive() && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if d.Alive() {
			logf("cleanup: dockerd %d ignored SIGTERM for %s: SIGKILL", d.Pid, grace)
			syscall.Kill(d.Pid, syscall.SIGKILL)
		}
	}
}

// ourProcs are the run's processes: the recorded daemons, anything whose
// command line names one of the run's directories (containerd, the shims,
// docker CLI calls) and everything below them (plugins, containers).
func ourProcs(r *Record) map[int]ProcInfo {
	ps := ListProcs()
	roots := map[int]bool{}
	for _, d := range r.Daemons {
		if d.Alive() {
			roots[d.Pid] = true
		}
	}
	for _, p := range ps {
		for _, root := range r.Roots {
			if strings.Contains(p.Cmdline, root) {
				roots[p.Pid] = true
			}
		}
	}
	// Never ourselves or our ancestors.
	for pid := os.Getpid(); pid > 1; {
		delete(roots, pid)
		ppid := 0
		for _, p := range ps {
			if p.Pid == pid {
				ppid = p.PPid
			}
		}
		pid = ppid
	}
	out := descendants(ps, roots)
	delete(out, os.Getpid())
	return out
}

// killOurs SIGKILLs the run's remaining processes and returns those that
// would not die.
func killOurs(r *Record, logf Logf) []string {
	for attempt := 0; attempt < 50; attempt++ {
		ps := ourProcs(r)
		var live []ProcInfo
		for _, p := range ps {
			if !isZombie(p.Pid) {
				live = append(live, p)
			}
		}
		if len(live) == 0 {
			return nil
		}
		if attempt == 49 {
			var left []string
			for _, p := range live {
				left = append(left, fmt.Sprintf("%d %s", p.Pid, p.Cmdline))
			}
			return left
		}
		for _, p := range live {
			if attempt == 0 {
				logf("cleanup: killing leftover process %d (%s)", p.Pid, p.Cmdline)
			}
			syscall.Kill(p.Pid, syscall.SIGKILL)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return nil
}

// mountsUnder lists the mounts under the run's directories and its
// network namespaces' handles.
func mountsUnder(r *Record) []string {
	ms, err := ReadMountinfo("/proc/self/mountinfo")
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, m := range ms {
		if r.owns(m.MountPoint) {
			out = append(out, m.MountPoint)
		}
	}
	return out
}

func (r *Record) owns(path string) bool {
	for _, root := range r.Roots {
		if under(path, root) {
			return true
		}
	}
	for _, ns := range r.NetNS {
		if path == filepath.Join("/run/netns", ns) {
			return true
		}
	}
	return false
}

// unmountUnder unmounts, deepest first, everything under the run's
// directories (container rootfs, plugin propagated mounts, netns handles
// of dockerd's sandboxes) but not the run's own /run/netns handles, which
// `ip netns del` removes.
func unmountUnder(r *Record, logf Logf) error {
	for pass := 0; pass < 10; pass++ {
		ms, err := ReadMountinfo("/proc/self/mountinfo")
		if err != nil {
			return err
		}
		var points []string
		for _, m := range ms {
			for _, root := range r.Roots {
				if under(m.MountPoint, root) {
					points = append(points, m.MountPoint)
				}
			}
		}
		if len(points) == 0 {
			return nil
		}
		sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
		for _, p := range points {
			if err := unix.Unmount(p, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
					logf("cleanup: umount %s: %v", p, err)
				}
			}
		}
	}
	if ms := mountsUnder(r); len(ms) > 0 {
		return fmt.Errorf("could not unmount: %v", ms)
	}
	return nil
}

// ourFileSet identifies the run's loop images: by inode, by the driver's
// tag (volume id) and by path.
type ourFileSet struct {
	ids     map[FileID]string
	volumes map[string]bool
	roots   []string
}

func ourFiles(r *Record) ourFileSet {
	s := ourFileSet{ids: filesUnder(r.DataDirs), volumes: map[string]bool{}, roots: r.Roots}
	for _, d := range r.DataDirs {
		entries, _ := os.ReadDir(filepath.Join(d, "volumes"))
		for _, e := range entries {
			if id, ok := strings.CutSuffix(e.Name(), ".json"); ok {
				s.volumes[id] = true
			}
		}
	}
	return s
}

func (s ourFileSet) has(l Loop) bool {
	if _, ok := s.ids[FileID{Dev: l.Device, Ino: l.Inode}]; ok && l.Inode != 0 {
		return true
	}
	if id, _, ok := strings.Cut(l.FileName, "@"); ok && s.volumes[id] {
		return true
	}
	for _, root := range s.roots {
		if under(strings.TrimSuffix(l.BackingFile, " (deleted)"), root) {
			return true
		}
	}
	return false
}

func detachLoops(s ourFileSet, logf Logf) error {
	loops, err := ListLoops()
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range loops {
		if !s.has(l) {
			continue
		}
		logf("cleanup: detaching %s (%s, %s)", l.Dev, l.BackingFile, l.FileName)
		fd, err := unix.Open(l.Dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
			errs = append(errs, fmt.Errorf("detach %s: %w", l.Dev, err))
		}
		unix.Close(fd)
	}
	return errors.Join(errs...)
}

// PluginRunDir is where dockerd keeps its plugins' sockets, whatever its
// --exec-root (moby's getPluginExecRoot: socket paths must stay short).
const PluginRunDir = "/run/docker/plugins"

// containerIDs are the ids of the run's containers and plugins, from the
// daemons' data-roots.
func containerIDs(r *Record) map[string]bool {
	ids := map[string]bool{}
	for _, root := range r.Roots {
		for _, sub := range []string{"containers", "plugins"} {
			matches, _ := filepath.Glob(filepath.Join(root, "*", "data-root", sub, "*"))
			for _, m := range matches {
				if len(filepath.Base(m)) == 64 {
					ids[filepath.Base(m)] = true
				}
			}
		}
	}
	return ids
}

// removeRunFiles removes what the daemons keep outside their roots: the
// plugins' socket directories under /run/docker/plugins and containerd's
// shim sockets under /run/containerd/s, named by a hash of the containerd
// address, the namespace and the id (containerd 1.6 shim.SocketAddress).
// A daemon that stops cleanly removes them itself.
func removeRunFiles(r *Record, logf Logf) error {
	var errs []error
	ids := containerIDs(r)
	for id := range ids {
		dir := filepath.Join(PluginRunDir, id)
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		if ms, _ := ReadMountinfo("/proc/self/mountinfo"); ms != nil {
			for _, m := range ms {
				if under(m.MountPoint, dir) {
					unix.Unmount(m.MountPoint, unix.MNT_DETACH)
				}
			}
		}
		logf("cleanup: removing %s", dir)
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	for _, root := range r.Roots {
		socks, _ := filepath.Glob(filepath.Join(root, "*", "containerd", "containerd.sock"))
		for _, sock := range socks {
			for id := range ids {
				for _, ns := range []string{"moby", "plugins.moby"} {
					sum := sha256.Sum256([]byte(filepath.Join(sock, ns, id)))
					p := filepath.Join("/run/containerd/s", hex.EncodeToString(sum[:]))
					if err := os.Remove(p); err == nil {
						logf("cleanup: removed shim socket %s", p)
					}
				}
			}
		}
	}
	return errors.Join(errs...)
}

// removeCgroups removes the empty cgroups dockerd made for the run's
// containers and plugins (a SIGKILLed daemon leaves them).
func removeCgroups(r *Record, logf Logf) {
	ids := containerIDs(r)
	if len(ids) == 0 {
		return
	}
	var dirs []string
	filepath.WalkDir("/sys/fs/cgroup", func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if strings.Count(strings.TrimPrefix(p, "/sys/fs/cgroup/"), "/") > 4 {
			return filepath.SkipDir
		}
		if ids[d.Name()] {
			dirs = append(dirs, p)
		}
		return nil
	})
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	for _, d := range dirs {
		if err := unix.Rmdir(d); err == nil {
			logf("cleanup: removed cgroup %s", d)
		}
	}
}

// leftovers lists what of the run is still there: processes, mounts, loop
// devices, network namespaces, directories.
func leftovers(r *Record, ours ourFileSet, ids map[string]bool) []string {
	var left []string
	for id := range ids {
		if _, err := os.Stat(filepath.Join(PluginRunDir, id)); err == nil {
			left = append(left, "directory "+filepath.Join(PluginRunDir, id))
		}
	}
	for _, p := range ourProcs(r) {
		if !isZombie(p.Pid) {
			left = append(left, fmt.Sprintf("process %d %s", p.Pid, p.Cmdline))
		}
	}
	for _, m := range mountsUnder(r) {
		left = append(left, "mount "+m)
	}
	if loops, err := ListLoops(); err == nil {
		for _, l := range loops {
			if ours.has(l) {
				left = append(left, fmt.Sprintf("loop device %s (%s, %s)", l.Dev, l.BackingFile, l.FileName))
			}
		}
	}
	for _, ns := range r.NetNS {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			left = append(left, "network namespace "+ns)
		}
	}
	for _, root := range r.Roots {
		if _, err := os.Stat(root); err == nil {
			left = append(left, "directory "+root)
		}
	}
	return left
}
