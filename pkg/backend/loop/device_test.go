package loop

import (
	"bytes"
	"context"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/blockdev"
	"github.com/swarm-csi/swarm-csi/pkg/loopdev"
)

// attachForTest attaches v on n and detaches it when the test ends.
func attachForTest(t *testing.T, n *NodeSide, id string) string {
	t.Helper()
	v := mustVolume(t, n.Backend, id)
	dev, err := n.Attach(context.Background(), v, nil)
	if err != nil {
		t.Fatalf("Attach(%s): %v", id, err)
	}
	// Detach by tag, not by path: the path may name another device by then.
	t.Cleanup(func() {
		if err := n.Detach(context.Background(), id); err != nil {
			t.Errorf("cleanup: detach %s: %v", id, err)
		}
	})
	return dev
}

func TestAttachDetach(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	b, dir := newBackend(t)
	v := mustCreate(t, b, volSpec("v", 32*backend.MiB))
	n1 := b.ForNode("node-1")
	if err := n1.Health(ctx); err != nil {
		t.Fatalf("Health: %v", err)
	}

	dev := attachForTest(t, n1, v.ID)
	if got, err := n1.Device(ctx, v.ID); got != dev || err != nil {
		t.Fatalf("Device = %q, %v; want %q", got, err, dev)
	}
	if size, err := blockdev.Size(dev); err != nil || size != 32*backend.MiB {
		t.Fatalf("device size %d, %v; want %d", size, err, 32*backend.MiB)
	}
	// The device is backed by the volume's image.
	data := pattern(4096, 5)
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, backend.MiB); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	img, err := os.Open(b.store.volumeImage(v.ID))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	_, err = img.ReadAt(got, backend.MiB)
	img.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data written to %s is not in the image (%v)", dev, err)
	}

	// Attaching again returns the same device.
	if again, err := n1.Attach(ctx, mustVolume(t, b, v.ID), nil); again != dev || err != nil {
		t.Fatalf("second Attach = %q, %v; want %q", again, err, dev)
	}
	// Another node sharing this kernel (a test swarm on one machine) does
	// not take node-1's device for its own, even from another process's
	// Backend; node-1 restarted finds it again.
	if other, err := b.ForNode("node-2").Device(ctx, v.ID); other != "" || err != nil {
		t.Fatalf("node-2 sees %q, %v", other, err)
	}
	if other, err := reopen(t, dir).ForNode("node-2").Device(ctx, v.ID); other != "" || err != nil {
		t.Fatalf("node-2 of another Backend sees %q, %v", other, err)
	}
	if err := reopen(t, dir).ForNode("node-2").Detach(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if same, err := reopen(t, dir).ForNode("node-1").Device(ctx, v.ID); same != dev || err != nil {
		t.Fatalf("node-1 after a restart finds %q, %v; want %q", same, err, dev)
	}

	// After the volume grew, a re-attach makes the device see the size.
	if _, err := b.ExpandVolume(ctx, v.ID, 64*backend.MiB); err != nil {
		t.Fatal(err)
	}
	if again, err := n1.Attach(ctx, mustVolume(t, b, v.ID), nil); again != dev || err != nil {
		t.Fatalf("Attach after growing = %q, %v; want %q", again, err, dev)
	}
	if size, err := blockdev.Size(dev); err != nil || size != 64*backend.MiB {
		t.Fatalf("device size after growing %d, %v; want %d", size, err, 64*backend.MiB)
	}

	for i := 0; i < 2; i++ {
		if err := n1.Detach(ctx, v.ID); err != nil {
			t.Fatalf("detach #%d: %v", i+1, err)
		}
	}
	if got, err := n1.Device(ctx, v.ID); got != "" || err != nil {
		t.Fatalf("Device after detach = %q, %v", got, err)
	}
}

func TestAttachDirectIO(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	b, _ := newBackend(t)
	n := b.ForNode("node-1")
	// The default uses the page cache, as a hand-made losetup does.
	cached := mustCreate(t, b, volSpec("cached", 16*backend.MiB))
	dev := attachForTest(t, n, cached.ID)
	info, err := n.loops.devs.Status(dev)
	if err != nil {
		t.Fatal(err)
	}
	if info.Flags&unix.LO_FLAGS_DIRECT_IO != 0 {
		t.Fatalf("directIO by default, but %s has LO_FLAGS_DIRECT_IO", dev)
	}
	if got := loopdev.CString(info.File_name[:]); got != loopTag(cached.ID, n.tag) {
		t.Fatalf("device tag %q, want %q", got, loopTag(cached.ID, n.tag))
	}
	// directIO=true asks for direct I/O; whether the kernel grants it
	// depends on the data directory's filesystem, so only the attach is
	// checked.
	spec := volSpec("direct", 16*backend.MiB)
	spec.MutableParameters = map[string]string{ParamDirectIO: "true"}
	direct := mustCreate(t, b, spec)
	if dev2 := attachForTest(t, n, direct.ID); dev2 == dev {
		t.Fatalf("two volumes on one device %s", dev)
	}
	if _, err := n.Device(ctx, direct.ID); err != nil {
		t.Fatal(err)
	}
}
