package loopdev

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/blockdev"
)

func TestTag(t *testing.T) {
	if got := Tag("vol-1", "abc"); got != "vol-1@abc" {
		t.Fatalf("Tag = %q", got)
	}
	if got := CString([]byte("ab\x00cd")); got != "ab" {
		t.Fatalf("CString = %q", got)
	}
	if got := CString([]byte("abc")); got != "abc" {
		t.Fatalf("CString without NUL = %q", got)
	}
}

func TestAttachFindRefreshDetach(t *testing.T) {
	testenv.RequireRoot(t)
	l := New()
	file := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(file, 8<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Attach(file, strings.Repeat("t", MaxTag+1), false); err == nil {
		t.Fatal("a tag longer than lo_file_name was accepted")
	}
	tag := Tag("vol-test", "node")
	dev, err := l.Attach(file, tag, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Detach(dev) })
	if got, err := l.Find(file, tag); got != dev || err != nil {
		t.Fatalf("Find = %q, %v; want %q", got, err, dev)
	}
	if got, err := l.Find(file, Tag("vol-test", "other")); got != "" || err != nil {
		t.Fatalf("Find with another tag = %q, %v", got, err)
	}
	if got, err := l.Find(filepath.Join(t.TempDir(), "none"), tag); got != "" || err != nil {
		t.Fatalf("Find of a missing file = %q, %v", got, err)
	}
	info, err := l.Status(dev)
	if err != nil || CString(info.File_name[:]) != tag {
		t.Fatalf("Status: %v, %v", info, err)
	}
	if err := os.Truncate(file, 16<<20); err != nil {
		t.Fatal(err)
	}
	if err := l.Refresh(dev, file); err != nil {
		t.Fatal(err)
	}
	if size, err := blockdev.Size(dev); size != 16<<20 || err != nil {
		t.Fatalf("size after Refresh %d, %v", size, err)
	}
	if err := l.Detach(dev); err != nil {
		t.Fatal(err)
	}
	if got, err := l.Find(file, tag); got != "" || err != nil {
		t.Fatalf("Find after Detach = %q, %v", got, err)
	}
}

// Find remembers devices, but never trusts what it remembers: a device
// detached or reused by another process is found out.
func TestFindRechecksRememberedDevice(t *testing.T) {
	testenv.RequireRoot(t)
	l, other := New(), New()
	dir := t.TempDir()
	var files []string
	for _, name := range []string{"a", "b"} {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(f, 8<<20); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	tag := Tag("vol-test", "node")
	dev, err := l.Attach(files[0], tag, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Detach(dev) })
	// A device l attached is found without a scan.
	sysBlock := l.sysBlock
	l.sysBlock = t.TempDir()
	if got, err := l.Find(files[0], tag); got != dev || err != nil {
		t.Fatalf("Find without a scan = %q, %v; want %q", got, err, dev)
	}
	l.sysBlock = sysBlock
	// Detached behind l's back, and the same tag on another file: the
	// kernel usually hands out the same device again.
	if err := other.Detach(dev); err != nil {
		t.Fatal(err)
	}
	dev2, err := other.Attach(files[1], tag, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Detach(dev2) })
	if got, err := l.Find(files[0], tag); got != "" || err != nil {
		t.Fatalf("Find of a file whose device was detached = %q, %v", got, err)
	}
	// l learns of the device another process attached, and of its detach.
	if got, err := l.Find(files[1], tag); got != dev2 || err != nil {
		t.Fatalf("Find = %q, %v; want %q", got, err, dev2)
	}
	if err := other.Detach(dev2); err != nil {
		t.Fatal(err)
	}
	if got, err := l.Find(files[1], tag); got != "" || err != nil {
		t.Fatalf("Find after another process detached = %q, %v", got, err)
	}
}

// One scan is enough to find every device after a restart: the scan
// remembers every device it passes, by the name of its file.
func TestScanRemembersEveryTag(t *testing.T) {
	testenv.RequireRoot(t)
	l := New()
	dir := t.TempDir()
	var files []string
	for _, name := range []string{"a", "b", "c"} {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(f, 8<<20); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	devs := map[string]string{}
	for _, name := range []string{"a", "b"} {
		dev, err := l.Attach(filepath.Join(dir, name), Tag("vol-"+name, "node"), false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Detach(dev) })
		devs[name] = dev
	}
	restarted := New()
	// c is attached nowhere: its Find scans every device.
	if got, err := restarted.Find(files[2], Tag("vol-c", "node")); got != "" || err != nil {
		t.Fatalf("Find of a file not attached = %q, %v", got, err)
	}
	restarted.sysBlock = t.TempDir() // no scan from here on
	for i, name := range []string{"a", "b"} {
		if got, err := restarted.Find(files[i], Tag("vol-"+name, "node")); got != devs[name] || err != nil {
			t.Fatalf("Find of %s without a scan = %q, %v; want %q", name, got, err, devs[name])
		}
	}
}

// A free device whose node devtmpfs has not made yet is waited for.
func TestAttachWaitsForDeviceNode(t *testing.T) {
	testenv.RequireRoot(t)
	devDir := t.TempDir()
	l := New()
	l.dev = devDir
	if err := os.Symlink("/dev/loop-control", l.Control()); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(file, 8<<20); err != nil {
		t.Fatal(err)
	}
	linked := make(chan struct{})
	go func() {
		defer close(linked)
		time.Sleep(50 * time.Millisecond)
		nodes, _ := filepath.Glob("/dev/loop[0-9]*")
		for _, n := range nodes {
			_ = os.Symlink(n, filepath.Join(devDir, filepath.Base(n)))
		}
	}()
	defer func() { <-linked }()
	tag := Tag("vol-late", "node")
	dev, err := l.Attach(file, tag, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Detach(dev) })
	if filepath.Dir(dev) != devDir {
		t.Fatalf("attached to %s, want a device in %s", dev, devDir)
	}
	if info, err := l.Status(dev); err != nil || CString(info.File_name[:]) != tag {
		t.Fatalf("Status of %s: %v, %v", dev, info, err)
	}
}

// SetDirectIO switches an attached device between the page cache and
// direct I/O, and leaves it as it is when it is so already.
func TestSetDirectIO(t *testing.T) {
	testenv.RequireRoot(t)
	l := New()
	file := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(file, 8<<20); err != nil {
		t.Fatal(err)
	}
	dev, err := l.Attach(file, Tag("vol-dio", "node"), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Detach(dev) })
	if on, err := l.DirectIO(dev); on || err != nil {
		t.Fatalf("DirectIO after attaching without = %v, %v", on, err)
	}
	// The kernel switches only where the file's filesystem can do direct
	// I/O (not tmpfs); elsewhere the device keeps the page cache.
	f, err := os.OpenFile(file, os.O_RDONLY|unix.O_DIRECT, 0)
	canDirect := err == nil
	if canDirect {
		f.Close()
	}
	for i := range 2 {
		if switched, err := l.SetDirectIO(dev, true); switched != (canDirect && i == 0) || err != nil {
			t.Fatalf("SetDirectIO(true) #%d = %v, %v", i+1, switched, err)
		}
		if on, err := l.DirectIO(dev); on != canDirect || err != nil {
			t.Fatalf("DirectIO after switching on = %v, %v; want %v", on, err, canDirect)
		}
	}
	for i := range 2 {
		if switched, err := l.SetDirectIO(dev, false); switched != (canDirect && i == 0) || err != nil {
			t.Fatalf("SetDirectIO(false) #%d = %v, %v", i+1, switched, err)
		}
		if on, err := l.DirectIO(dev); on || err != nil {
			t.Fatalf("DirectIO after switching off = %v, %v", on, err)
		}
	}
}

// Find asks for the status only of devices whose file has the image's
// name, as sysfs shows it: that name follows a rename, and two files of
// one name are still told apart.
func TestFindByFileName(t *testing.T) {
	testenv.RequireRoot(t)
	l := New()
	var files []string
	for range 2 {
		f := filepath.Join(t.TempDir(), "disk")
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(f, 8<<20); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	tag := Tag("vol-name", "node")
	var devs []string
	for _, f := range files {
		dev, err := l.Attach(f, tag, false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Detach(dev) })
		devs = append(devs, dev)
		if name, err := fileName(unix.AT_FDCWD, filepath.Join(l.sysBlock, filepath.Base(dev))); name != "disk" || err != nil {
			t.Fatalf("file name of %s = %q, %v", dev, name, err)
		}
	}
	for i, f := range files {
		if got, err := New().Find(f, tag); got != devs[i] || err != nil {
			t.Fatalf("Find of %s = %q, %v; want %s", f, got, err, devs[i])
		}
	}
	renamed := filepath.Join(filepath.Dir(files[1]), "renamed")
	if err := os.Rename(files[1], renamed); err != nil {
		t.Fatal(err)
	}
	if got, err := New().Find(renamed, tag); got != devs[1] || err != nil {
		t.Fatalf("Find of the renamed file = %q, %v; want %s", got, err, devs[1])
	}
	if got, err := l.Find(renamed, tag); got != devs[1] || err != nil {
		t.Fatalf("Find of the renamed file by the process that attached it = %q, %v; want %s", got, err, devs[1])
	}
	if name, err := fileName(unix.AT_FDCWD, filepath.Join(l.sysBlock, "loop-none")); name != "" || err != nil {
		t.Fatalf("file name of a device that does not exist = %q, %v", name, err)
	}
}
