package node

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
)

// readyToMount says what e2fsck -p decides: a fresh ext4 is mounted as it
// is; one with a journal to replay, errors, orphans or a check due goes
// through fsck, as does a device holding another filesystem or none.
func TestReadyToMount(t *testing.T) {
	testenv.Require(t, testenv.MissingTools("mkfs.ext4", "e2fsck"))
	img := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 16<<20); err != nil {
		t.Fatal(err)
	}
	if ready, err := readyToMount(img, "ext4"); ready || err != nil {
		t.Fatalf("an empty device: ready %t, %v", ready, err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-m0", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	if ready, err := readyToMount(img, "ext4"); !ready || err != nil {
		t.Fatalf("a fresh ext4: ready %t, %v", ready, err)
	}
	if ready, _ := readyToMount(img, "xfs"); ready {
		t.Fatal("an ext4 taken for xfs")
	}
	sb, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	for _, tc := range []struct {
		name string
		edit func(sb []byte)
	}{
		{"not cleanly unmounted", func(sb []byte) { le.PutUint16(sb[0x3a:], 0) }},
		{"errors", func(sb []byte) { le.PutUint16(sb[0x3a:], 0x3) }},
		{"a journal to replay", func(sb []byte) { le.PutUint32(sb[0x60:], le.Uint32(sb[0x60:])|0x4) }},
		{"orphans", func(sb []byte) { le.PutUint32(sb[0xe8:], 12) }},
		{"a check due by mounts", func(sb []byte) { le.PutUint16(sb[0x36:], 20); le.PutUint16(sb[0x34:], 20) }},
		{"checks by time", func(sb []byte) { le.PutUint32(sb[0x44:], 3600) }},
	} {
		c := append([]byte(nil), sb[1024:2048]...)
		tc.edit(c)
		if ext4Clean(c) {
			t.Errorf("%s: taken for clean", tc.name)
		}
	}
	if !ext4Clean(sb[1024:2048]) {
		t.Error("the unedited superblock is not clean")
	}
	// e2fsck agrees: it leaves the fresh filesystem as it is.
	if out, err := exec.Command("e2fsck", "-p", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -p on what readyToMount calls clean: %v: %s", err, out)
	}
}
