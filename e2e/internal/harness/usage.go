package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// VolumeImage is where the loop backend keeps a volume's image in the
// cluster's data directory.
func (c *Cluster) VolumeImage(volumeID string) string {
	return filepath.Join(c.DataDir, "volumes", volumeID+".img")
}

// VolumeRecord is the volume's metadata file in the data directory.
func (c *Cluster) VolumeRecord(volumeID string) string {
	return filepath.Join(c.DataDir, "volumes", volumeID+".json")
}

// VolumeMount is one mount of a volume's filesystem somewhere.
type VolumeMount struct {
	Node       string // the node whose daemon, plugin or container holds it
	Where      string // "host", "plugin" or "container pid N"
	MountPoint string
	Device     string // major:minor
}

func (m VolumeMount) String() string {
	return fmt.Sprintf("%s %s %s (%s)", m.Node, m.Where, m.MountPoint, m.Device)
}

// Usage is what holds a volume: the loop devices backing its image and
// every mount of them, seen from the host and from the mount namespaces
// of each node's plugin and containers.
type Usage struct {
	Loops  []Loop
	Mounts []VolumeMount
}

// Nodes returns the nodes on which the volume is mounted.
func (u Usage) Nodes() []string {
	set := map[string]bool{}
	for _, m := range u.Mounts {
		set[m.Node] = true
	}
	var out []string
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (u Usage) String() string {
	var b strings.Builder
	for _, l := range u.Loops {
		fmt.Fprintf(&b, "loop %s backing_file=%s tag=%s\n", l.Dev, l.BackingFile, l.FileName)
	}
	for _, m := range u.Mounts {
		fmt.Fprintf(&b, "mount %s\n", m)
	}
	if b.Len() == 0 {
		return "no loop device, no mount"
	}
	return b.String()
}

// Watcher finds the mounts of a volume quickly enough to poll every few
// milliseconds: it remembers which processes belong to which node and
// reads one mountinfo per mount namespace.
type Watcher struct {
	c     *Cluster
	match func(Loop) bool // the volume's loop devices
	// nsPids: for each node, one pid per distinct mount namespace of its
	// plugin and containers (everything below its containerd shims).
	nsPids map[string][]int
}

// NewWatcher watches the volume whose image is at path.
func (c *Cluster) NewWatcher(image string) (*Watcher, error) {
	id, err := IDOf(image)
	if err != nil {
		return nil, err
	}
	return c.NewLoopWatcher(func(l Loop) bool { return l.Device == id.Dev && l.Inode == id.Ino }), nil
}

// NewLoopWatcher watches the volume whose loop devices match says.
func (c *Cluster) NewLoopWatcher(match func(Loop) bool) *Watcher {
	w := &Watcher{c: c, match: match}
	w.Refresh()
	return w
}

// Refresh re-reads the processes of every node (new containers).
func (w *Watcher) Refresh() {
	ps := ListProcs()
	w.nsPids = map[string][]int{}
	for _, n := range w.c.Nodes {
		shims := map[int]bool{}
		for _, p := range ps {
			if strings.Contains(p.Comm, "containerd-shim") && strings.Contains(p.Cmdline, n.ExecRoot+"/") {
				shims[p.Pid] = true
			}
		}
		seen := map[string]bool{}
		for pid := range descendants(ps, shims) {
			if shims[pid] {
				continue
			}
			ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
			if err != nil || seen[ns] {
				continue
			}
			seen[ns] = true
			w.nsPids[n.Name] = append(w.nsPids[n.Name], pid)
		}
	}
}

// Usage samples the volume's loop devices and mounts now.
func (w *Watcher) Usage() (Usage, error) {
	var u Usage
	loops, err := ListLoops()
	if err != nil {
		return u, err
	}
	devs := map[string]bool{}
	for _, l := range loops {
		if w.match(l) {
			u.Loops = append(u.Loops, l)
			devs[l.MajorMinor] = true
		}
	}
	if len(devs) == 0 {
		return u, nil
	}
	host, err := ReadMountinfo("/proc/self/mountinfo")
	if err != nil {
		return u, err
	}
	for _, m := range host {
		if !devs[m.MajorMinor] {
			continue
		}
		node := "unknown"
		for _, n := range w.c.Nodes {
			if under(m.MountPoint, n.DataRoot) || under(m.MountPoint, n.ExecRoot) {
				node = n.Name
			}
		}
		u.Mounts = append(u.Mounts, VolumeMount{Node: node, Where: "host", MountPoint: m.MountPoint, Device: m.MajorMinor})
	}
	for _, n := range w.c.Nodes {
		for _, pid := range w.nsPids[n.Name] {
			ms, err := ReadMountinfo(fmt.Sprintf("/proc/%d/mountinfo", pid))
			if err != nil {
				continue // exited
			}
			where := fmt.Sprintf("pid %d", pid)
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil {
				where = fmt.Sprintf("pid %d (%s)", pid, strings.TrimSpace(string(b)))
			}
			for _, m := range ms {
				if devs[m.MajorMinor] {
					u.Mounts = append(u.Mounts, VolumeMount{Node: n.Name, Where: where, MountPoint: m.MountPoint, Device: m.MajorMinor})
				}
			}
		}
	}
	return u, nil
}

// VolumeUsage samples what holds the volume whose image is at path; a
// missing image holds nothing.
func (c *Cluster) VolumeUsage(ctx context.Context, image string) (Usage, error) {
	if _, err := os.Stat(image); os.IsNotExist(err) {
		return Usage{}, nil
	}
	w, err := c.NewWatcher(image)
	if err != nil {
		return Usage{}, err
	}
	return w.Usage()
}
