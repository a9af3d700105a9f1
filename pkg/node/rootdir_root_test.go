package node_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
)

// createOwned creates a mount volume with the uid, gid and mode parameters.
func (c *cluster) createOwned(name, fsType string) string {
	c.t.Helper()
	resp, err := c.ctrl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name:               name,
		Parameters:         map[string]string{"fsType": fsType, "uid": "1000", "gid": "1000", "mode": "0750"},
		CapacityRange:      &csi.CapacityRange{RequiredBytes: 320 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{capability(fsType, false)}})
	c.must(err)
	return resp.GetVolume().GetVolumeId()
}

// writeAs writes a file in dir as uid:gid, as a container running as that
// user would. The directory is passed open, as fd 3: the test's parent
// directories are root's alone.
func writeAs(dir string, uid, gid uint32) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	cmd := exec.Command("sh", "-c", "echo data > /proc/self/fd/3/file-$0", strconv.Itoa(int(uid)))
	cmd.ExtraFiles = []*os.File{d}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

func ownerMode(t *testing.T, path string) (uint32, uint32, uint32) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid, st.Gid, st.Mode & 0o7777
}

// A new ext4 or xfs volume with uid, gid and mode has its root so after
// mkfs, whichever way it was formatted (a blank image without a probe, or
// a probed one); the user's later changes survive the next stage; and a
// filesystem made before a crash, whose root was never changed, gets them
// at the next stage.
func TestRealRootOwnerAndMode(t *testing.T) {
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) {
			needRoot(t, "mkfs."+fsType)
			c := newCluster(t)
			defer c.cleanup()
			image := func(id string) string { return filepath.Join(c.dir, "data/volumes", id+".img") }
			for _, how := range []string{"blank", "probed", "mkfs before a crash"} {
				id := c.createOwned(how, fsType)
				switch how {
				case "probed": // not blank any more, but no filesystem
					f, err := os.OpenFile(image(id), os.O_WRONLY, 0)
					c.must(err)
					_, err = f.WriteAt(make([]byte, 4096), 1<<20)
					c.must(err)
					c.must(f.Close())
				case "mkfs before a crash":
					if out, err := exec.Command("mkfs."+fsType, "-q", image(id)).CombinedOutput(); err != nil {
						t.Fatalf("mkfs: %v: %s", err, out)
					}
				}
				target := c.attach("node-a", id, fsType, false)
				if u, g, m := ownerMode(t, target); u != 1000 || g != 1000 || m != 0o750 {
					t.Fatalf("%s: root is %d:%d %#o, want 1000:1000 0750", how, u, g, m)
				}
				if err := writeAs(target, 1000, 1000); err != nil {
					t.Fatalf("%s: user 1000 cannot write: %v", how, err)
				}
				if err := writeAs(target, 2000, 2000); err == nil || !strings.Contains(err.Error(), "Permission denied") {
					t.Fatalf("%s: user 2000 writing to a 0750 root of user 1000: %v, want permission denied", how, err)
				}
				// The user opens the volume to the world and gives it
				// away; the next stage, on another node, keeps that.
				c.must(os.Chmod(target, 0o777))
				c.must(os.Chown(target, 2000, 2000))
				c.detach("node-a", id)
				c.released(id)
				target = c.attach("node-b", id, fsType, false)
				if u, g, m := ownerMode(t, target); u != 2000 || g != 2000 || m != 0o777 {
					t.Fatalf("%s: after a new stage the root is %d:%d %#o, want the user's 2000:2000 0777", how, u, g, m)
				}
				c.detach("node-b", id)
				c.released(id)
			}
		})
	}
}
