package loopdev

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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
