package rbd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/loopdev"
	"github.com/swarm-csi/swarm-csi/pkg/mountinfo"
	"github.com/swarm-csi/swarm-csi/pkg/procs"
	"github.com/swarm-csi/swarm-csi/pkg/volcap"
)

// fuseAttacher exposes an image as a file with rbd-fuse (one process and
// mount per image) and attaches the file to a loop device. The mount point
// and the loop device's tag both follow from the image and the node, so a
// restarted driver finds them again, and several node processes on one
// kernel (a test swarm on one machine) never take each other's.
//
// rbd-fuse runs outside the driver's process group and outlives it: a
// restarted driver leaves the volumes in use attached. It does not outlive
// the plugin's container, which is why production nodes use krbd.
type fuseAttacher struct {
	b     *Backend
	root  string // <state>/fuse/<node tag>
	tag   string // node tag
	loops *loopdev.Devices
	// wait bounds each wait for the kernel or rbd-fuse (mount, size,
	// unmount, exit).
	wait time.Duration

	mu    sync.Mutex
	stats map[string]*fileStat // by file: the stat of it under way
}

func newFuse(b *Backend, tag string) *fuseAttacher {
	return &fuseAttacher{b: b, root: filepath.Join(b.cfg.StateDir, "fuse", tag), tag: tag,
		loops: loopdev.New(), wait: 10 * time.Second, stats: map[string]*fileStat{}}
}

func (f *fuseAttacher) tools() []string { return []string{"rbd-fuse"} }

// mountPoint is where rbd-fuse exposes ref: <root>/<pool>/<image>, holding
// the one file <image>. Pool and image names are checked before they get
// here (parseVolumeID).
func (f *fuseAttacher) mountPoint(ref imageRef) string {
	return filepath.Join(f.root, ref.pool, ref.image)
}

func (f *fuseAttacher) file(ref imageRef) string {
	return filepath.Join(f.mountPoint(ref), ref.image)
}

func (f *fuseAttacher) loopTag(hash string) string { return loopdev.Tag(hash, f.tag) }

// fuseState is what /proc/self/mountinfo and the file say of a mount point.
type fuseState int

const (
	fuseAbsent fuseState = iota
	fuseLive
	fuseDead // rbd-fuse is gone, its mount is left: ENOTCONN
)

func (f *fuseAttacher) state(ctx context.Context, ref imageRef) (fuseState, error) {
	mp := f.mountPoint(ref)
	mounted, err := isFuseMount(mp)
	if err != nil || !mounted {
		return fuseAbsent, err
	}
	if err := f.stat(ctx, ref); err != nil {
		if errors.Is(err, unix.ENOTCONN) || errors.Is(err, fs.ErrNotExist) {
			return fuseDead, nil
		}
		return fuseAbsent, err
	}
	return fuseLive, nil
}

// fileStat is a stat of an rbd-fuse file: err is set when done closes.
type fileStat struct {
	done chan struct{}
	err  error
}

// stat stats the rbd-fuse file of ref, waiting for an rbd-fuse that does
// not answer (stuck, or its cluster gone) until ctx ends or f.wait passes.
// The kernel lets nothing but a fatal signal interrupt a stat waiting on
// a FUSE daemon: the stat goes on in the background until rbd-fuse
// answers or dies, and the volume's next calls wait for that same stat
// rather than leave one more behind.
func (f *fuseAttacher) stat(ctx context.Context, ref imageRef) error {
	file := f.file(ref)
	f.mu.Lock()
	st := f.stats[file]
	if st == nil {
		st = &fileStat{done: make(chan struct{})}
		f.stats[file] = st
		go func() {
			_, st.err = os.Stat(file)
			f.mu.Lock()
			delete(f.stats, file)
			f.mu.Unlock()
			close(st.done)
		}()
	}
	f.mu.Unlock()
	timer := time.NewTimer(f.wait)
	defer timer.Stop()
	select {
	case <-st.done:
		return st.err
	case <-ctx.Done():
		return fmt.Errorf("%w: rbd-fuse for %s does not answer (%v)", csierr.ErrUnavailable, ref, ctx.Err())
	case <-timer.C:
		return fmt.Errorf("%w: rbd-fuse for %s has not answered for %s", csierr.ErrUnavailable, ref, f.wait)
	}
}

func (f *fuseAttacher) device(ctx context.Context, ref imageRef, hash string) (string, error) {
	st, err := f.state(ctx, ref)
	if err != nil || st != fuseLive {
		return "", err
	}
	return f.loops.Find(f.file(ref), f.loopTag(hash))
}

// directIO reports whether the loop device of v reads and writes the
// rbd-fuse file past the page cache. It follows from the access mode v was
// created with, which never changes, so every stage of v decides alike.
//
// Page cache, where one node at a time may write (the single-node modes)
// or none ever does (MULTI_NODE_READER_ONLY): reads are served from memory,
// as from a hand-made losetup, and the cache goes with the rbd-fuse mount
// when the node lets go of the volume. An fsync stays durable: the loop
// device turns a flush into an fsync of the file, which rbd-fuse turns
// into rbd_flush, and it writes every write through to librbd at once.
//
// Direct I/O, where one node may write while another reads the image
// (MULTI_NODE_SINGLE_WRITER, MULTI_NODE_MULTI_WRITER): each node's page
// cache would keep serving what the other has overwritten since. So does a
// volume recorded without an access mode.
func directIO(v *backend.Volume) bool {
	m := volcap.ParseMode(v.AccessMode)
	return !volcap.SingleNode(m) && !volcap.ReadOnly(m)
}

func (f *fuseAttacher) attach(ctx context.Context, cr creds, ref imageRef, hash string, v *backend.Volume) (string, error) {
	st, err := f.state(ctx, ref)
	if err != nil {
		return "", err
	}
	if st == fuseDead {
		// The loop device on the dead file is useless: a fresh mount gets
		// a fresh device.
		f.releaseLoop(ctx, hash, ref)
		if err := unix.Unmount(f.mountPoint(ref), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return "", fmt.Errorf("unmount dead rbd-fuse mount %s: %w", f.mountPoint(ref), err)
		}
		st = fuseAbsent
	}
	fresh := st == fuseAbsent
	if fresh {
		if err := f.mount(ctx, cr, ref); err != nil {
			return "", err
		}
	}
	file := f.file(ref)
	// After an expansion rbd-fuse shows the new size within about a second.
	if err := f.waitFor(ctx, func() bool {
		fi, err := os.Stat(file)
		return err == nil && fi.Size() >= v.CapacityBytes
	}); err != nil {
		return "", fmt.Errorf("rbd-fuse did not show %s at %d bytes: %w", ref, v.CapacityBytes, err)
	}
	// A file just mounted has no loop device yet: no need to look through
	// the devices for one. That look asks the file of each device attached
	// to a file of the image's name for its inode, and a blocklisted
	// rbd-fuse never answers (a fenced client of another node of a test
	// swarm sharing this kernel, of the same image).
	dev := ""
	if !fresh {
		if dev, err = f.loops.Find(file, f.loopTag(hash)); err != nil {
			return "", err
		}
	}
	if dev == "" {
		return f.loops.Attach(file, f.loopTag(hash), directIO(v))
	}
	if err := f.loops.Refresh(dev, file); err != nil {
		return "", err
	}
	// A device attached otherwise (by a release that always used direct
	// I/O) is switched at the volume's next stage.
	switched, err := f.loops.SetDirectIO(dev, directIO(v))
	if switched {
		f.b.cfg.Log.Info("switched the loop device of an rbd-fuse file", "volume", v.ID, "device", dev, "directIO", directIO(v))
	}
	return dev, err
}

// mount starts rbd-fuse for one image and waits for its mount. The key
// reaches it as a keyring file, never on its command line.
func (f *fuseAttacher) mount(ctx context.Context, cr creds, ref imageRef) error {
	mp := f.mountPoint(ref)
	if err := os.MkdirAll(mp, 0o700); err != nil {
		return err
	}
	logPath := mp + ".log"
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command("rbd-fuse", "-f", "-c", f.b.cli.conf, "--id", cr.user, "--keyring", cr.keyring,
		"-p", ref.pool, "-r", ref.image, mp)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own session: signals to the driver's group do not reach it, and
	// it outlives a driver restart.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start rbd-fuse for %s: %w", ref, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }() // reaps it when it ends
	err = f.waitFor(ctx, func() bool {
		select {
		case <-exited:
			return true
		default:
		}
		ok, _ := isFuseMount(mp)
		return ok
	})
	select {
	case <-exited:
		return fmt.Errorf("rbd-fuse for %s exited: %s", ref, tail(logPath))
	default:
	}
	if err != nil {
		_ = cmd.Process.Kill()
		return fmt.Errorf("rbd-fuse for %s did not mount: %w: %s", ref, err, tail(logPath))
	}
	return nil
}

// detach detaches the loop device, unmounts rbd-fuse and waits for it to
// exit, so that the image has no watcher left when this returns (DeleteVolume
// refuses an image that has one).
func (f *fuseAttacher) detach(ctx context.Context, ref imageRef, hash string) error {
	mp := f.mountPoint(ref)
	mounted, err := isFuseMount(mp)
	if err != nil {
		return err
	}
	if mounted {
		if err := f.releaseLoop(ctx, hash, ref); err != nil {
			return err
		}
		if err := f.unmount(ctx, mp); err != nil {
			return err
		}
	}
	if err := f.waitFor(ctx, func() bool { return len(fusePIDs(mp)) == 0 }); err != nil {
		return fmt.Errorf("rbd-fuse for %s did not exit after its unmount: %w", ref, err)
	}
	for _, p := range []string{mp, filepath.Dir(mp)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
			return err
		}
	}
	return nil
}

// releaseLoop detaches the image file's loop device and waits until the
// kernel has let go of the file.
func (f *fuseAttacher) releaseLoop(ctx context.Context, hash string, ref imageRef) error {
	dev, err := f.loops.Find(f.file(ref), f.loopTag(hash))
	if err != nil || dev == "" {
		return err
	}
	if err := f.loops.Detach(dev); err != nil {
		return err
	}
	// That device let go, or went to another file: not a look through
	// every device (see attach).
	return f.waitFor(ctx, func() bool {
		info, err := f.loops.Status(dev)
		return err != nil || loopdev.CString(info.File_name[:]) != f.loopTag(hash)
	})
}

// unmount unmounts an rbd-fuse mount point; a loop device let go of only
// now keeps it busy for a moment.
func (f *fuseAttacher) unmount(ctx context.Context, mp string) error {
	var lastErr error
	err := f.waitFor(ctx, func() bool {
		lastErr = unix.Unmount(mp, 0)
		return lastErr == nil || errors.Is(lastErr, unix.EINVAL) || errors.Is(lastErr, unix.ENOENT)
	})
	if err != nil {
		return fmt.Errorf("unmount %s: %v (%w)", mp, lastErr, err)
	}
	return nil
}

// waitFor polls cond until it holds, the context ends, or f.wait passes.
func (f *fuseAttacher) waitFor(ctx context.Context, cond func() bool) error {
	deadline := time.Now().Add(f.wait)
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 200*time.Millisecond) {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up after %s", f.wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}

// isFuseMount reports whether an rbd-fuse filesystem is mounted at mp.
func isFuseMount(mp string) (bool, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		before, after, ok := strings.Cut(sc.Text(), " - ")
		fields := strings.Fields(before)
		if !ok || len(fields) < 5 || mountinfo.Unescape(fields[4]) != mp {
			continue
		}
		if strings.HasPrefix(after, "fuse.rbd-fuse ") || strings.HasPrefix(after, "fuse ") {
			return true, nil
		}
	}
	return false, sc.Err()
}

// fusePIDs returns the rbd-fuse processes serving mount point mp, found
// in /proc so that a restarted driver finds those an earlier process
// started.
func fusePIDs(mp string) []int { return procs.Serving("rbd-fuse", mp) }

// tail returns the last lines of a log file, for an error message.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}
