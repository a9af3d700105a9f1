// Package fsutil replaces files atomically, with as much durability as the
// caller needs.
package fsutil

import (
	"os"
	"path/filepath"
)

// Durability says what WriteFile has made crash-proof when it returns.
type Durability int

const (
	// Atomic: readers see the old content or the new, never a mix, and so
	// does a process that crashes; a machine crash may lose the write.
	Atomic Durability = iota
	// DataSynced: the new content reaches the disk before the rename, so
	// after a machine crash the file holds the old content or the new,
	// never a truncated one; the rename itself is durable once the
	// directory is synced (SyncDir), which lets a caller that replaces
	// several files in one directory sync it once.
	DataSynced
	// Durable: the directory is synced too; the new content survives a
	// machine crash.
	Durable
)

// WriteFileAtomic replaces path with data durably: a temporary file in the
// same directory, fsync, rename, fsync of the directory.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	return WriteFile(path, data, perm, Durable)
}

// WriteFile replaces path with data through a temporary file in the same
// directory and a rename, synced as d says. A failure leaves path as it
// was and no temporary file behind.
func WriteFile(path string, data []byte, perm os.FileMode, d Durability) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil && d >= DataSynced {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d >= Durable {
		return SyncDir(dir)
	}
	return nil
}

// SyncDir makes the entries of dir (files created, renamed or removed in
// it) durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
