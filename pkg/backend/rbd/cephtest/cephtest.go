// Package cephtest brings up the throwaway single-node Ceph cluster of
// scripts/ceph-cluster for tests, and takes it down again: when the test
// says so, and, through a watcher process, when the test process dies
// without saying so (a timeout, a kill).
package cephtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Cluster is a running test cluster.
type Cluster struct {
	Dir          string // everything of the cluster lives here
	Conf         string // a client configuration (monitors, cephx)
	MonHost      string // the monitor addresses, for --rbd-monitors
	Pool         string
	User         string // a user limited to rbd on the pool
	Keyring      string // its keyring (mode 0600)
	AdminKeyring string
	// FS, FSUser and FSKeyring are the file system and the cephfs
	// backend's user, for a cluster from StartFS.
	FS, FSUser, FSKeyring string
	// StartTime is how long `up` took.
	StartTime time.Duration
	watcher   *os.Process
	netns     string
}

// Tools are the commands a test cluster needs, from scripts/install-deps.
var Tools = []string{"ceph", "ceph-mon", "ceph-mgr", "ceph-osd", "ceph-authtool", "monmaptool", "rbd", "rbd-fuse"}

// Missing says why this machine cannot run a test cluster, or "".
func Missing() string {
	if os.Geteuid() != 0 {
		return fmt.Sprintf("needs root (a Ceph cluster, rbd-fuse mounts, loop devices); running as uid %d", os.Geteuid())
	}
	for _, t := range Tools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Sprintf("needs %s (install the Ceph packages with scripts/install-deps)", t)
		}
	}
	for _, p := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Sprintf("needs %s: %v", p, err)
		}
	}
	return ""
}

// Script is the path of scripts/ceph-cluster in this source tree.
func Script() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "..", "scripts", "ceph-cluster")
}

// Start brings a cluster up with pool "rbd" under a new directory. Call
// Stop when done; if the process dies first, a watcher takes it down.
func Start(ctx context.Context) (*Cluster, error) { return StartIn(ctx, "") }

// StartIn is Start with the cluster's daemons, and every command run on
// it, in the network namespace netns (an `ip netns` name; "" for this
// one): its 127.0.0.1 is then the namespace's.
func StartIn(ctx context.Context, netns string) (*Cluster, error) { return StartAt(ctx, netns, "") }

// StartAt is StartIn with the daemons listening on addr, an IPv4 address
// of netns ("" for 127.0.0.1), so that other namespaces routed to it
// reach the cluster too.
func StartAt(ctx context.Context, netns, addr string) (*Cluster, error) {
	return start(ctx, netns, addr, "rbd", "")
}

// FSTools are the further commands a cluster with a file system needs.
var FSTools = []string{"ceph-mds", "ceph-fuse", "fusermount"}

// MissingFS is Missing for a cluster with a file system.
func MissingFS() string {
	if m := Missing(); m != "" {
		return m
	}
	for _, t := range FSTools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Sprintf("needs %s (install the Ceph packages with scripts/install-deps)", t)
		}
	}
	return ""
}

// StartFS brings a cluster up with the file system "cephfs" (one MDS) and
// no rbd pool, in the network namespace netns ("" for this one). Every
// ceph-fuse mount of it must be gone before Stop (see KillFuse).
func StartFS(ctx context.Context, netns string) (*Cluster, error) { return StartFSAt(ctx, netns, "") }

// StartFSAt is StartFS with the daemons listening on addr (see StartAt).
func StartFSAt(ctx context.Context, netns, addr string) (*Cluster, error) {
	return start(ctx, netns, addr, "none", "cephfs")
}

func start(ctx context.Context, netns, addr, pool, fs string) (*Cluster, error) {
	// Short: the monitor's and daemons' unix sockets live under it.
	dir, err := os.MkdirTemp("", "swarm-csi-ceph-")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(dir); err != nil { // the script makes it
		return nil, err
	}
	c := &Cluster{Dir: dir, netns: netns}
	// The watcher first: a death during `up` is covered too.
	w := exec.Command("bash", Script(), "watch", dir, strconv.Itoa(os.Getpid()))
	w.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := w.Start(); err != nil {
		return nil, fmt.Errorf("start the cluster's watcher: %w", err)
	}
	c.watcher = w.Process
	go func() { _ = w.Wait() }()

	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := c.command(ctx, "bash", Script(), "up", dir, pool)
	cmd.Env = os.Environ()
	if addr != "" {
		cmd.Env = append(cmd.Env, "CEPH_ADDR="+addr)
	}
	if fs != "" {
		cmd.Env = append(cmd.Env, "CEPH_FS="+fs)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		_ = c.Stop()
		return nil, fmt.Errorf("scripts/ceph-cluster up: %v\n%s", err, out.String())
	}
	c.StartTime = time.Since(start)
	env, err := readEnv(filepath.Join(dir, "env"))
	if err != nil {
		_ = c.Stop()
		return nil, err
	}
	c.Conf, c.MonHost, c.Pool = env["CEPH_CONF"], env["CEPH_MON_HOST"], env["CEPH_POOL"]
	c.User, c.Keyring, c.AdminKeyring = env["CEPH_USER"], env["CEPH_KEYRING"], env["CEPH_ADMIN_KEYRING"]
	c.FS, c.FSUser, c.FSKeyring = env["CEPH_FS"], env["CEPH_FS_USER"], env["CEPH_FS_KEYRING"]
	return c, nil
}

func readEnv(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	return env, sc.Err()
}

// Stop takes the cluster down and removes its directory. It signals the
// daemons by pid: it works after their network namespace is gone too.
func (c *Cluster) Stop() error {
	out, err := exec.Command("bash", Script(), "down", c.Dir).CombinedOutput()
	if c.watcher != nil {
		_ = c.watcher.Kill()
		c.watcher = nil
	}
	if err != nil {
		return fmt.Errorf("scripts/ceph-cluster down: %v\n%s", err, out)
	}
	return nil
}

// StopMon stops the monitor; StartMon starts it again.
func (c *Cluster) StopMon() error  { return c.script("stop-mon") }
func (c *Cluster) StartMon() error { return c.script("start-mon") }

func (c *Cluster) script(cmd string) error {
	out, err := c.command(context.Background(), "bash", Script(), cmd, c.Dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("scripts/ceph-cluster %s: %v\n%s", cmd, err, out)
	}
	return nil
}

// Admin runs rbd (or, with tool "ceph", ceph) as client.admin and returns
// its output.
func (c *Cluster) Admin(ctx context.Context, tool string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	full := append([]string{"-c", c.Conf, "-n", "client.admin", "-k", c.AdminKeyring}, args...)
	var stderr bytes.Buffer
	cmd := c.command(ctx, tool, full...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %v: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// command is exec.CommandContext, in the cluster's network namespace.
func (c *Cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if c.netns == "" {
		return exec.CommandContext(ctx, name, args...)
	}
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=/run/netns/" + c.netns, name}, args...)...)
}

// Images returns the images of the pool whose names start with prefix, and
// those in its trash.
func (c *Cluster) Images(ctx context.Context, prefix string) (images, trash []string, err error) {
	var ls []string
	out, err := c.Admin(ctx, "rbd", "ls", "--format", "json", c.Pool)
	if err != nil {
		return nil, nil, err
	}
	if err := json.Unmarshal(out, &ls); err != nil {
		return nil, nil, err
	}
	for _, i := range ls {
		if strings.HasPrefix(i, prefix) {
			images = append(images, i)
		}
	}
	var tr []struct {
		Name string `json:"name"`
	}
	out, err = c.Admin(ctx, "rbd", "trash", "ls", "--format", "json", c.Pool)
	if err != nil {
		return nil, nil, err
	}
	if err := json.Unmarshal(out, &tr); err != nil {
		return nil, nil, err
	}
	for _, e := range tr {
		if strings.HasPrefix(e.Name, prefix) {
			trash = append(trash, e.Name)
		}
	}
	return images, trash, nil
}

// KillFuse ends every ceph-fuse process whose command line contains
// substr (a test's directory) and detaches its mount: what must happen
// before the cluster stops, since anything touching a mount whose cluster
// is gone hangs in D state. It returns the mount points it found.
func KillFuse(substr string) []string {
	entries, _ := os.ReadDir("/proc")
	var mounts []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), substr) {
			continue
		}
		args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
		if filepath.Base(args[0]) != "ceph-fuse" {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
		mp := args[len(args)-1]
		_ = syscall.Unmount(mp, syscall.MNT_DETACH)
		mounts = append(mounts, mp)
	}
	return mounts
}

// LogTail returns the last n lines of a daemon's log (name: mon.a, mgr.x,
// osd.0, mds.a), for a test's failure report.
func (c *Cluster) LogTail(name string, n int) string {
	b, err := os.ReadFile(filepath.Join(c.Dir, "log", name+".log"))
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
