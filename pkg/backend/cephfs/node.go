package cephfs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/mountinfo"
	"github.com/swarm-csi/swarm-csi/pkg/procs"
)

// NodeSide is the cephfs backend as the node service uses it: it mounts a
// volume's subvolume at its staging path, once per node, with ceph-fuse
// or the kernel's client.
type NodeSide struct {
	*Backend
	nodeID string
	// client is ClientKernel or ClientFuse.
	client string
	mu     sync.Mutex
	// staged are the staging paths this process mounted, by volume.
	staged map[string]string
}

var _ backend.FilesystemNode = (*NodeSide)(nil)

// ForNode returns the node side of b for node nodeID, with its client
// chosen: Config.Client, or for ClientAuto the kernel's client where the
// host has one (/proc/filesystems lists ceph), ceph-fuse otherwise.
func (b *Backend) ForNode(nodeID string) (*NodeSide, error) {
	if !backend.ValidNodeID(nodeID) {
		return nil, csierr.Invalid("node id %q: letters, digits, '.', '_' and '-'", nodeID)
	}
	client := b.cfg.Client
	if client == ClientAuto {
		client = ClientFuse
		if kernelHasCeph() {
			client = ClientKernel
		}
	}
	if client == ClientFuse {
		if _, err := exec.LookPath("ceph-fuse"); err != nil {
			return nil, fmt.Errorf("cephfs client fuse: %w", err)
		}
	}
	b.cfg.Log.Info("cephfs: this node mounts volumes with the " + client + " client")
	return &NodeSide{Backend: b, nodeID: nodeID, client: client, staged: map[string]string{}}, nil
}

// Client is how this node mounts: ClientKernel or ClientFuse.
func (n *NodeSide) Client() string { return n.client }

func kernelHasCeph() bool {
	b, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[len(f)-1] == "ceph" {
			return true
		}
	}
	return false
}

// Register implements backend.Node: the node writes its record. While
// Ceph does not answer, it goes on trying in the background until it
// succeeds or ctx ends.
func (n *NodeSide) Register(ctx context.Context, nodeID string) error {
	if !backend.ValidNodeID(nodeID) {
		return csierr.Invalid("node id %q: letters, digits, '.', '_' and '-'", nodeID)
	}
	register := func() error {
		cctx, cancel := n.call(ctx)
		defer cancel()
		return n.cephErr(n.cl.Put(cctx, nodeKey(nodeID), []byte("{}")), "register node %s", nodeID)
	}
	err := register()
	if err == nil || !errors.Is(err, csierr.ErrUnavailable) {
		return err
	}
	n.cfg.Log.Warn("Ceph does not answer: registering the node in the background", "error", err)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Second):
			}
			if register() == nil {
				n.cfg.Log.Info("node registered", "node", nodeID)
				return
			}
		}
	}()
	return nil
}

// Health implements backend.Node: Ceph must answer.
func (n *NodeSide) Health(ctx context.Context) error {
	ctx, cancel := n.call(ctx)
	defer cancel()
	_, err := n.cl.Get(ctx, nodeKey(n.nodeID))
	if isKind(err, KindNotFound) {
		return nil
	}
	return n.cephErr(err, "Ceph")
}

// mountID is the client metadata value of this node's mount of a volume.
func (n *NodeSide) mountID(volumeID string) string { return n.nodeID + "." + volumeID }

// Mount implements backend.FilesystemNode. A live mount at the staging
// path is left as it is. A dead one (its ceph-fuse killed: the path
// answers ENOTCONN) is detached, the dead client's session evicted so that
// the files it held open no longer block the other nodes, and the
// subvolume mounted again.
func (n *NodeSide) Mount(ctx context.Context, v *backend.Volume, staging string, readOnly bool) error {
	r, err := n.readReady(ctx, v.ID)
	if err != nil {
		return err
	}
	fstype, mounted, err := mountAt(staging)
	if err != nil {
		return err
	}
	if mounted {
		if err := alive(staging); err == nil {
			n.remember(v.ID, staging)
			return nil
		}
		n.cfg.Log.Warn("dead mount: mounting the volume again", "volume", v.ID, "path", staging, "type", fstype)
		if err := detach(staging); err != nil {
			return err
		}
		n.endFuse(staging, 0)
	}
	n.evict(ctx, v.ID)
	start := time.Now()
	if n.client == ClientKernel {
		err = n.mountKernel(r.Path, staging, readOnly)
	} else {
		err = n.mountFuse(ctx, v.ID, r.Path, staging, readOnly)
	}
	if err != nil {
		return err
	}
	n.cfg.Log.Debug("subvolume mounted", "volume", v.ID, "client", n.client, "took", time.Since(start))
	n.remember(v.ID, staging)
	return nil
}

// evict ends the sessions a dead mount of the volume on this node left.
// It needs the mds cap "allow *"; without it the MDS drops them after its
// session_timeout, so a failure is only logged.
func (n *NodeSide) evict(ctx context.Context, volumeID string) {
	ctx, cancel := n.call(ctx)
	defer cancel()
	k, err := n.cl.Evict(ctx, n.mountID(volumeID))
	switch {
	case err != nil:
		n.cfg.Log.Warn("dead clients not evicted: the MDS drops them after its session_timeout", "volume", volumeID, "error", err)
	case k > 0:
		n.cfg.Log.Info("dead clients evicted", "volume", volumeID, "count", k)
	}
}

func (n *NodeSide) remember(volumeID, staging string) {
	n.mu.Lock()
	n.staged[volumeID] = staging
	n.mu.Unlock()
}

func (n *NodeSide) mountFuse(ctx context.Context, volumeID, path, staging string, readOnly bool) error {
	args := []string{"-c", n.conf, "-n", "client." + n.cfg.User, "--keyring", n.keyring,
		"--client_fs=" + n.cfg.FsName, "-r", path,
		"--client_metadata=" + mountKey + "=" + n.mountID(volumeID)}
	if readOnly {
		args = append(args, "-o", "ro")
	}
	args = append(args, staging)
	ctx, cancel := n.call(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ceph-fuse", args...)
	// ceph-fuse daemonizes once the mount is made: the process this
	// starts ends then, and the daemon outlives this call.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ceph-fuse %s at %s: %v: %s", path, staging, err, strings.TrimSpace(out.String()))
	}
	return nil
}

func (n *NodeSide) mountKernel(path, staging string, readOnly bool) error {
	key := n.cfg.Key
	if key == "" {
		k, err := keyOf(n.keyring, n.cfg.User)
		if err != nil {
			return err
		}
		key = k
	}
	var flags uintptr
	if readOnly {
		flags |= unix.MS_RDONLY
	}
	src := kernelMonitors(n.cfg.Monitors) + ":" + path
	opts := "name=" + n.cfg.User + ",secret=" + key + ",mds_namespace=" + n.cfg.FsName
	if err := unix.Mount(src, staging, "ceph", flags, opts); err != nil {
		return fmt.Errorf("mount -t ceph %s at %s: %w", src, staging, err)
	}
	return nil
}

// kernelMonitors turns "mon host" into the kernel client's list: the v1
// addresses (host:port) of [v2:...,v1:...] entries, plain entries as they
// are.
func kernelMonitors(mons string) string {
	var out []string
	for _, group := range strings.FieldsFunc(mons, func(r rune) bool { return r == ' ' || r == ';' }) {
		group = strings.Trim(group, "[]")
		var v1, plain []string
		for _, a := range strings.Split(group, ",") {
			a = strings.Trim(a, "[] ")
			switch {
			case strings.HasPrefix(a, "v1:"):
				v1 = append(v1, strings.TrimSuffix(strings.TrimPrefix(a, "v1:"), "/0"))
			case strings.HasPrefix(a, "v2:"), a == "":
			default:
				plain = append(plain, a)
			}
		}
		out = append(out, v1...)
		out = append(out, plain...)
	}
	return strings.Join(out, ",")
}

// keyOf reads client.user's key from a keyring file.
func keyOf(keyring, user string) (string, error) {
	f, err := os.Open(keyring)
	if err != nil {
		return "", err
	}
	defer f.Close()
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "[") {
			section = strings.Trim(l, "[]")
			continue
		}
		if k, v, ok := strings.Cut(l, "="); ok && section == "client."+user && strings.TrimSpace(k) == "key" {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("keyring %s has no key for client.%s", keyring, user)
}

// Unmount implements backend.FilesystemNode: the mount goes, and with it
// the node's ceph-fuse for the volume. It ends by itself once unmounted,
// after closing its session with the MDS (about a second); one that
// lingers past fuseGrace is killed and its session evicted, so that the
// capabilities it held do not hold up the other clients (or the removal
// of the subvolume) until the MDS's session_timeout.
func (n *NodeSide) Unmount(ctx context.Context, volumeID, staging string) error {
	_, mounted, err := mountAt(staging)
	if err != nil {
		return err
	}
	if mounted {
		if err := unmount(staging); err != nil {
			return err
		}
	}
	if n.endFuse(staging, fuseGrace) {
		n.evict(ctx, volumeID)
	}
	n.mu.Lock()
	delete(n.staged, volumeID)
	n.mu.Unlock()
	return nil
}

// unmount unmounts path: a dead mount at once, a live one when nothing
// holds it any more. One still busy after a second (the kernel releasing
// the last bind of it) is detached: its ceph-fuse then ends, or is ended,
// as for any unmount.
func unmount(path string) error {
	if alive(path) != nil {
		return detach(path)
	}
	var err error
	for i := 0; i < 10; i++ {
		if err = unix.Unmount(path, 0); !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	switch {
	case errors.Is(err, unix.EBUSY):
		return detach(path)
	case err != nil && !errors.Is(err, unix.EINVAL):
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	return nil
}

func detach(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("detach %s: %w", path, err)
	}
	return nil
}

// fuseGrace is how long a ceph-fuse may take to end after its unmount.
const fuseGrace = 10 * time.Second

// endFuse waits up to grace for the ceph-fuse processes that served
// mountpoint to end, then kills them; it reports whether it did.
func (n *NodeSide) endFuse(mountpoint string, grace time.Duration) bool {
	deadline := time.Now().Add(grace)
	for {
		pids := fusePids(mountpoint)
		if len(pids) == 0 {
			return false
		}
		if time.Now().After(deadline) {
			for _, p := range pids {
				_ = unix.Kill(p, unix.SIGKILL)
			}
			n.cfg.Log.Warn("ceph-fuse did not end after its unmount: killed", "path", mountpoint, "pids", pids, "grace", grace)
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fusePids returns the live ceph-fuse processes serving mountpoint, and
// reaps those that ended as this process's children.
func fusePids(mountpoint string) []int { return procs.Serving("ceph-fuse", mountpoint) }

// Check implements backend.FilesystemNode: a volume this process mounted
// must answer at its staging path; a dead ceph-fuse leaves it answering
// ENOTCONN.
func (n *NodeSide) Check(_ context.Context, volumeID string) error {
	n.mu.Lock()
	staging, ok := n.staged[volumeID]
	n.mu.Unlock()
	if !ok {
		return nil
	}
	if err := alive(staging); err != nil {
		return csierr.Precondition("the mount of volume %s at %s is dead (%v): the next publish or mount check mounts it again", volumeID, staging, err)
	}
	return nil
}

// alive reports why the filesystem at path does not answer, or nil.
func alive(path string) error {
	var st unix.Statfs_t
	return unix.Statfs(path, &st)
}

// mountAt reports whether path is a mount point, and of which type,
// from the mount table alone: it never touches the mount, which may be
// dead.
func mountAt(path string) (fstype string, ok bool, err error) {
	path = filepath.Clean(path)
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", false, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 10 || mountinfo.Unescape(f[4]) != path {
			continue
		}
		for i := 6; i < len(f)-1; i++ {
			if f[i] == "-" {
				fstype, ok = f[i+1], true
			}
		}
	}
	return fstype, ok, nil
}

// Attach implements backend.Node: there is no device.
func (n *NodeSide) Attach(context.Context, *backend.Volume, map[string]string) (string, error) {
	return "", csierr.Invalid("a cephfs volume is a subvolume of the file system: it has no device")
}

// Detach implements backend.Node: there is no device to detach.
func (n *NodeSide) Detach(context.Context, string) error { return nil }

// Device implements backend.Node: there is no device.
func (n *NodeSide) Device(context.Context, string) (string, error) { return "", nil }

var _ backend.UsageReporter = (*NodeSide)(nil)

// Usage implements backend.UsageReporter from the virtual extended
// attributes of the subvolume's root, mounted at path: its quota
// (ceph.quota.max_bytes, max_files) and what its tree holds
// (ceph.dir.rbytes, rfiles, rsubdirs), which the MDS keeps up to date.
func (n *NodeSide) Usage(_ context.Context, path string) (backend.Usage, error) {
	var u backend.Usage
	for _, a := range []struct {
		name string
		to   *int64
	}{
		{"ceph.quota.max_bytes", &u.CapacityBytes}, {"ceph.dir.rbytes", &u.UsedBytes},
		{"ceph.dir.rfiles", &u.Files}, {"ceph.quota.max_files", &u.MaxFiles},
	} {
		v, err := xattrInt(path, a.name)
		if err != nil {
			return u, err
		}
		*a.to = v
	}
	dirs, err := xattrInt(path, "ceph.dir.rsubdirs")
	if err != nil {
		return u, err
	}
	// rsubdirs counts the root itself.
	u.Files += max(dirs-1, 0)
	return u, nil
}

func xattrInt(path, name string) (int64, error) {
	buf := make([]byte, 64)
	n, err := unix.Getxattr(path, name, buf)
	if errors.Is(err, unix.ENODATA) {
		return 0, nil // no quota of this kind
	}
	if err != nil {
		return 0, fmt.Errorf("%s of %s: %w", name, path, err)
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(buf[:n])), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s of %s: %q: %w", name, path, buf[:n], err)
	}
	return v, nil
}
