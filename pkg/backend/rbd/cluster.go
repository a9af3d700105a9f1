package rbd

import (
	"context"
	"time"
)

// cluster is every control operation the backend asks of Ceph. The driver
// does them in process through librados and librbd (goceph.go, built with
// the tags ceph and pacific); attaching an image stays a process (rbd
// device map, rbd-nbd, rbd-fuse), as in Ceph's own CSI driver.
//
// Every method is bounded by the client timeouts of the configuration
// (rados_mon_op_timeout, rados_osd_op_timeout, client_mount_timeout) and
// answers an *Error whose Kind says what failed: KindNotFound for a missing
// image, snapshot or key, KindExists, KindBusy, KindUnreachable while no
// monitor answers, and so on.
type cluster interface {
	// Create makes an empty image of size bytes.
	Create(ctx context.Context, cr creds, ref imageRef, size int64, o imageOptions) error
	// Clone makes ref a clone (format 2) of the snapshot parent.
	Clone(ctx context.Context, cr creds, parent snapRef, ref imageRef, o imageOptions) error
	// Info describes an image.
	Info(ctx context.Context, cr creds, ref imageRef) (*imageInfo, error)
	// Resize grows (or shrinks) an image to size bytes.
	Resize(ctx context.Context, cr creds, ref imageRef, size int64) error
	// Remove deletes an image. One that is open on a client, or has
	// snapshots, is KindBusy, and nothing changes.
	Remove(ctx context.Context, cr creds, ref imageRef) error

	// TrashMove moves an image to its pool's trash.
	TrashMove(ctx context.Context, cr creds, ref imageRef) error
	// Trash lists a pool's trash.
	Trash(ctx context.Context, cr creds, pool string) ([]trashEntry, error)
	// TrashInfo describes an image in the trash by its id.
	TrashInfo(ctx context.Context, cr creds, pool, id string) (*imageInfo, error)
	// TrashRemove deletes an image from the trash; one that clones still
	// need is KindBusy.
	TrashRemove(ctx context.Context, cr creds, pool, id string) error

	// SnapCreate takes a snapshot; an existing one is KindExists.
	SnapCreate(ctx context.Context, cr creds, snap snapRef) error
	// SnapRemove deletes a snapshot; clone v2 keeps one that clones need
	// in the image's trash namespace until the last clone is gone.
	SnapRemove(ctx context.Context, cr creds, snap snapRef) error
	// Snapshots lists an image's snapshots in every namespace.
	Snapshots(ctx context.Context, cr creds, ref imageRef) ([]snapInfo, error)

	// MetaGet, MetaSet, MetaRemove and MetaList are an image's metadata
	// (rbd image-meta). Each set replaces one key atomically. Removing a
	// missing key is KindNotFound, but from the index, where it is no
	// error.
	MetaGet(ctx context.Context, cr creds, ref imageRef, key string) (string, error)
	MetaSet(ctx context.Context, cr creds, ref imageRef, key, value string) error
	MetaRemove(ctx context.Context, cr creds, ref imageRef, key string) error
	// MetaSetKeys sets several keys of the index at once, atomically.
	MetaSetKeys(ctx context.Context, cr creds, ref imageRef, kv map[string]string) error
	// MetaGetKeys returns the values of those of keys the image has, in
	// one read.
	MetaGetKeys(ctx context.Context, cr creds, ref imageRef, keys []string) (map[string]string, error)
	// MetaList returns, in key order, the keys that start with prefix and
	// sort after after ("": from the first), with their values: at most
	// max of them (0: all), and whether more follow. The keys before
	// after, and those past the last returned, are not read.
	MetaList(ctx context.Context, cr creds, ref imageRef, prefix, after string, max int) ([]metaEntry, bool, error)
	// SetOption sets a librbd option of one image (rbd config image set).
	SetOption(ctx context.Context, cr creds, ref imageRef, key, value string) error

	// Watchers returns the addresses of the clients that have the image
	// open for writing (a mapping, an rbd-fuse mount).
	Watchers(ctx context.Context, cr creds, ref imageRef) ([]string, error)
	// Blocklist fences a client, named by its address as Watchers gives
	// it: the OSDs refuse its every operation for d (ceph osd blocklist
	// add), so that it can never write again.
	Blocklist(ctx context.Context, cr creds, addr string, d time.Duration) error
	// LockOwners returns the clients that hold the image's exclusive lock.
	LockOwners(ctx context.Context, cr creds, ref imageRef) ([]string, error)
	// BreakLock takes the exclusive lock away from owner (as LockOwners
	// names it).
	BreakLock(ctx context.Context, cr creds, ref imageRef, owner string) error

	// PoolAvailable is what a pool can still take, after replication
	// (ceph df's max_avail).
	PoolAvailable(ctx context.Context, cr creds, pool string) (int64, error)
}

// metaEntry is one key of an image's metadata and its value.
type metaEntry struct{ Key, Value string }

// imageOptions are the options of a new image.
type imageOptions struct {
	// Features, comma-separated (rbd --image-feature); "" for Ceph's default.
	Features string
	// DataPool holds the image's data, if set.
	DataPool string
}

// imageInfo is what the backend needs to know of an image.
type imageInfo struct {
	Name   string
	ID     string
	Size   int64
	Parent *parentInfo // nil for an image that is not a clone
}

// parentInfo is the snapshot a clone depends on.
type parentInfo struct {
	Pool, Image, ID, Snapshot string
	// Trash: the parent image is in the trash.
	Trash bool
}

// trashEntry is an image in a pool's trash.
type trashEntry struct {
	ID, Name string
}

// snapInfo is a snapshot of an image.
type snapInfo struct {
	Name string
	Size int64
	// Namespace is "user" for a snapshot someone took, "trash" for one
	// removed while clones still need it.
	Namespace string
}

// Namespaces of snapshots.
const (
	snapUser  = "user"
	snapTrash = "trash"
)
