package cephfs

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// cluster is every control operation the backend asks of Ceph: the mgr's
// volumes module for subvolumes, snapshots and clones, a few objects in the
// file system's metadata pool for the driver's records, and the MDS for
// evicting a dead client. The driver does them in process through
// librados, libcephfs and go-ceph's cephfs/admin (goceph.go, built with the
// tags ceph and pacific); a build without them answers ErrNoCeph.
//
// Every method is bounded by the client timeouts of the configuration and
// answers an *Error whose Kind says what failed.
type cluster interface {
	// CreateGroup makes the subvolume group; an existing one is not an error.
	CreateGroup(ctx context.Context, group string) error
	// Create makes a subvolume with a quota of size bytes and its root
	// directory's owner and mode; an existing one is left as it is.
	Create(ctx context.Context, group, name string, size int64, root rootDir) error
	// Info describes a subvolume.
	Info(ctx context.Context, group, name string) (*subvolInfo, error)
	// Resize sets a subvolume's quota.
	Resize(ctx context.Context, group, name string, size int64) error
	// Remove deletes a subvolume; one with snapshots is KindBusy.
	Remove(ctx context.Context, group, name string) error
	// List names the subvolumes of the group.
	List(ctx context.Context, group string) ([]string, error)

	// SnapCreate takes a snapshot; an existing one is KindExists.
	SnapCreate(ctx context.Context, group, name, snap string) error
	// SnapRemove deletes a snapshot; one with clones in progress is KindBusy.
	SnapRemove(ctx context.Context, group, name, snap string) error
	// Snapshots names a subvolume's snapshots.
	Snapshots(ctx context.Context, group, name string) ([]string, error)
	// Clone starts making subvolume target a copy of a snapshot.
	Clone(ctx context.Context, group, name, snap, target string) error
	// CloneState says how far the clone target is.
	CloneState(ctx context.Context, group, target string) (cloneState, error)
	// CancelClone stops a clone in progress; the target stays, canceled.
	CancelClone(ctx context.Context, group, target string) error

	// Get, Put and Delete are the driver's records: small objects in the
	// file system's metadata pool, each written whole at once.
	Get(ctx context.Context, key string) ([]byte, error)
	Put(ctx context.Context, key string, data []byte) error
	Delete(ctx context.Context, key string) error
	// Keys lists the records whose keys start with prefix.
	Keys(ctx context.Context, prefix string) ([]string, error)

	// Evict ends the MDS sessions of the clients whose metadata key
	// mountKey has the value id (their caps and locks are released, so
	// the others' writes go on), and returns how many it evicted.
	Evict(ctx context.Context, id string) (int, error)
	// Available is what the file system's data pool can still take.
	Available(ctx context.Context) (int64, error)
}

// rootDir is a new subvolume's root directory (mode 0: Ceph's default).
type rootDir struct {
	UID, GID, Mode int
}

// subvolInfo is what the backend needs to know of a subvolume.
type subvolInfo struct {
	Path      string
	Quota     int64 // 0: none
	Used      int64
	CreatedAt time.Time
}

// cloneState is where a clone is: pending, in progress, complete or failed.
type cloneState string

// The clone states Ceph reports.
const (
	clonePending    cloneState = "pending"
	cloneInProgress cloneState = "in-progress"
	cloneComplete   cloneState = "complete"
	cloneFailed     cloneState = "failed"
	cloneCanceled   cloneState = "canceled"
)

// mountKey is the client metadata key each mount of the node side carries,
// so that Evict finds a dead mount's session.
const mountKey = "swarm_csi_mount"

// Kind classifies a cluster error.
type Kind int

// The kinds of cluster errors.
const (
	KindOther Kind = iota
	KindNotFound
	KindExists
	KindBusy
	KindDenied
	KindUnreachable
	KindNoSpace
)

// Error is a failed cluster operation.
type Error struct {
	Op   string
	Kind Kind
	Err  error
}

func (e *Error) Error() string { return fmt.Sprintf("ceph %s: %v", e.Op, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// isKind reports whether err is a cluster error of kind k.
func isKind(err error, k Kind) bool {
	var e *Error
	return errors.As(err, &e) && e.Kind == k
}
