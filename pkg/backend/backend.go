// Package backend defines the storage interface the controller and node
// services are written against. Each backend lives in its own package under
// pkg/backend/<name>; only cmd chooses one.
package backend

import (
	"context"
	"time"
)

// Info describes a backend's fixed properties.
type Info struct {
	// Name is the backend's name as given to --backend.
	Name string
	// Parameters are the CreateVolume parameters the backend accepts beyond
	// the common fsType, mkfsOptions and mountOptions.
	Parameters []string
	// DefaultSize is the size of a volume created without a capacity range.
	DefaultSize int64
	// Granularity is the unit volume sizes are rounded up to.
	Granularity int64
	// MinSize is the smallest volume the backend creates.
	MinSize int64
	// MaxSize is the largest volume the backend creates (0: no limit of
	// its own). Larger requests and expansions are OutOfRange.
	MaxSize int64
	// Topology is the segment that nodes reaching this backend's storage
	// report, and that its volumes are accessible from.
	Topology map[string]string
	// SingleNodeOnly says a volume attaches to one node at a time: the
	// multi-node access modes are refused.
	SingleNodeOnly bool
	// MaxVolumesPerNode is how many volumes the storage attaches to one
	// node at most (0: no limit of its own). The driver's per-node limit
	// never exceeds it. The storage refuses more itself: Publish then
	// answers ResourceExhausted, so at this limit the controller counts
	// nothing.
	MaxVolumesPerNode int64
	// SharedFilesystem says the volumes are directories of a filesystem
	// that every node mounts, not block devices: mount access only, with
	// no fsType or mkfsOptions, in every access mode including
	// MULTI_NODE_MULTI_WRITER (the filesystem keeps the nodes' writes
	// consistent). Sizes are recorded, not enforced, unless Quota. Its
	// node side is a FilesystemNode.
	SharedFilesystem bool
	// Quota says the shared filesystem holds each volume to its size
	// (a writer past it gets EDQUOT).
	Quota bool
}

// Source is where a new volume's content comes from. At most one field is set.
type Source struct {
	SnapshotID string `json:"snapshotId,omitempty"`
	VolumeID   string `json:"volumeId,omitempty"`
}

// VolumeSpec is a validated request for a volume.
type VolumeSpec struct {
	Name          string `json:"name"`
	CapacityBytes int64  `json:"capacityBytes"`
	FsType        string `json:"fsType,omitempty"`
	MkfsOptions   string `json:"mkfsOptions,omitempty"`
	// MountOptions are applied at every stage, after the capability's
	// mount flags: comma-separated, as in fstab.
	MountOptions string            `json:"mountOptions,omitempty"`
	Block        bool              `json:"block,omitempty"`
	AccessMode   string            `json:"accessMode"`
	Parameters   map[string]string `json:"parameters,omitempty"`
	// MutableParameters are settings that ModifyVolume may change later.
	MutableParameters map[string]string `json:"mutableParameters,omitempty"`
	Source            *Source           `json:"source,omitempty"`
	// Root is the owner and mode of the new volume's root directory (nil:
	// as mkfs makes it). A copy keeps its source's and has none.
	Root *RootDir `json:"root,omitempty"`
}

// Attachment records that a volume is published to a node.
type Attachment struct {
	NodeID   string `json:"nodeId"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// Volume is a volume as the backend stores it.
type Volume struct {
	ID string `json:"id"`
	VolumeSpec
	Attachments []Attachment `json:"attachments,omitempty"`
	CreatedAt   time.Time    `json:"createdAt"`
}

// SetAttachment records a, in place of the node's attachment if it had one.
func (v *Volume) SetAttachment(a Attachment) {
	v.Attachments = append(v.without(a.NodeID), a)
}

// RemoveAttachment drops the node's attachment, if any.
func (v *Volume) RemoveAttachment(nodeID string) { v.Attachments = v.without(nodeID) }

// without returns a new slice of the attachments but nodeID's.
func (v *Volume) without(nodeID string) []Attachment {
	out := make([]Attachment, 0, len(v.Attachments))
	for _, a := range v.Attachments {
		if a.NodeID != nodeID {
			out = append(out, a)
		}
	}
	return out
}

// AttachedTo returns the attachment for nodeID, if any.
func (v *Volume) AttachedTo(nodeID string) (Attachment, bool) {
	for _, a := range v.Attachments {
		if a.NodeID == nodeID {
			return a, true
		}
	}
	return Attachment{}, false
}

// SnapshotSpec is a validated request for a snapshot.
type SnapshotSpec struct {
	Name           string `json:"name"`
	SourceVolumeID string `json:"sourceVolumeId"`
	// FsType is the source's filesystem ("" for a block volume), so a
	// volume made from the snapshot keeps it after the source is gone.
	FsType string `json:"fsType,omitempty"`
	// GroupID is set for the members of a volume group snapshot, and
	// GroupSources lists the group's source volumes, sorted.
	GroupID      string   `json:"groupId,omitempty"`
	GroupSources []string `json:"groupSources,omitempty"`
}

// Snapshot is a point-in-time copy of a volume.
type Snapshot struct {
	ID string `json:"id"`
	SnapshotSpec
	SizeBytes int64     `json:"sizeBytes"`
	CreatedAt time.Time `json:"createdAt"`
}

// Condition is the health of a volume as the backend sees it.
type Condition struct {
	Abnormal bool
	Message  string
}

// Controller is the backend's side of the CSI controller service: what
// every backend does. A backend offers more by implementing the optional
// interfaces below (Expander, Modifier, CapacityReporter, Snapshotter,
// Cloner); the controller advertises and serves exactly those it finds, and
// answers Unimplemented for the rest. Every method is idempotent. Errors
// wrap the sentinels of package csierr.
type Controller interface {
	Info() Info
	// CreateVolume creates the empty volume named spec.Name (spec.Source
	// is nil), or returns the one that already has that name, unchanged,
	// for the caller to compare. A retry after a crash at any point
	// resumes the creation.
	CreateVolume(ctx context.Context, spec VolumeSpec) (*Volume, error)
	// DeleteVolume deletes a volume; an unknown id is not an error.
	DeleteVolume(ctx context.Context, id string) error
	// Volume returns a volume or an ErrNotFound error.
	Volume(ctx context.Context, id string) (*Volume, error)
	// ListVolumes returns all volumes, sorted by id.
	ListVolumes(ctx context.Context) ([]*Volume, error)
	// Publish records (and, where the storage needs it, performs) the
	// attachment of a volume to a node and returns the publish context. v
	// is the volume as the caller has just read it, holding the volume's
	// lock, so a backend whose reads are costly may use it as is.
	Publish(ctx context.Context, v *Volume, a Attachment) (map[string]string, error)
	// Unpublish removes the attachment of a volume to a node, if any.
	Unpublish(ctx context.Context, id, nodeID string) error
	// NodeKnown reports whether a node id names a node of this cluster.
	NodeKnown(ctx context.Context, nodeID string) (bool, error)
	// Condition reports whether a volume's storage is healthy.
	Condition(ctx context.Context, v *Volume) Condition
}

// Expander is a Controller whose volumes grow.
type Expander interface {
	// ExpandVolume grows a volume to at least size bytes and returns its size.
	ExpandVolume(ctx context.Context, id string, size int64) (int64, error)
}

// Modifier is a Controller whose volumes have mutable parameters.
type Modifier interface {
	// MutableParameters are the parameter names CreateVolume and
	// ModifyVolume accept in VolumeSpec.MutableParameters.
	MutableParameters() []string
	// ModifyVolume changes a volume's mutable parameters (validated by the
	// backend); they take effect when the volume is next attached.
	ModifyVolume(ctx context.Context, id string, params map[string]string) error
}

// CapacityReporter is a Controller whose storage tells its free space.
type CapacityReporter interface {
	// Capacity returns the bytes available for new volumes.
	Capacity(ctx context.Context) (int64, error)
}

// Snapshotter is a Controller that takes snapshots of volumes. To make
// volumes from its snapshots it must be a Cloner too.
type Snapshotter interface {
	// CreateSnapshot creates the snapshot named spec.Name, or returns the
	// existing snapshot with that name, unchanged.
	CreateSnapshot(ctx context.Context, spec SnapshotSpec) (*Snapshot, error)
	// DeleteSnapshot deletes a snapshot; an unknown id is not an error.
	DeleteSnapshot(ctx context.Context, id string) error
	// Snapshot returns a snapshot or an ErrNotFound error.
	Snapshot(ctx context.Context, id string) (*Snapshot, error)
	// ListSnapshots returns all snapshots, sorted by id.
	ListSnapshots(ctx context.Context) ([]*Snapshot, error)
}

// Cloner is a Controller that makes volumes with the content of another
// volume or, being a Snapshotter too, of a snapshot.
type Cloner interface {
	// CreateVolumeFrom is CreateVolume for a spec whose Source is set: the
	// new volume starts as a copy of it. A missing source is ErrNotFound.
	CreateVolumeFrom(ctx context.Context, spec VolumeSpec) (*Volume, error)
}

// Complete is a Controller with every optional feature.
type Complete interface {
	Controller
	Expander
	Modifier
	CapacityReporter
	Snapshotter
	Cloner
}

// Node is the backend's side of the CSI node service. Every method is
// idempotent.
type Node interface {
	// Register announces this node to the controller side. ctx is the
	// driver's life: what Register leaves running in the background ends
	// with it.
	Register(ctx context.Context, nodeID string) error
	// Volume returns a volume or an ErrNotFound error. It must work without
	// any publish context: Swarm may send none (SwarmKit #3276).
	Volume(ctx context.Context, id string) (*Volume, error)
	// Attach makes the volume's block device present on this node and
	// returns its path. On an attached volume it returns the same device,
	// after making the device see the volume's current size.
	Attach(ctx context.Context, v *Volume, publishContext map[string]string) (string, error)
	// Detach removes the volume's block device from this node.
	Detach(ctx context.Context, volumeID string) error
	// Device returns the path of the volume's block device on this node, or
	// "" when it is not attached.
	Device(ctx context.Context, volumeID string) (string, error)
	// Health reports whether this node can reach the storage.
	Health(ctx context.Context) error
}

// FilesystemNode is the node side of a backend with SharedFilesystem: a
// volume is a directory that Mount makes appear at the staging path, from
// where the node service bind-mounts it into containers as any filesystem.
// Such a backend has no device: Attach refuses, Device answers "" and
// Detach has nothing to do.
type FilesystemNode interface {
	Node
	// Mount checks that this node reaches the volume's directory on the
	// shared filesystem (a node that does not answers FailedPrecondition
	// naming the path) and mounts it at stagingPath, read-only if asked.
	// A directory mounted there already is checked and left as it is.
	Mount(ctx context.Context, v *Volume, stagingPath string, readOnly bool) error
	// Unmount undoes Mount; a path not mounted is not an error.
	Unmount(ctx context.Context, volumeID, stagingPath string) error
	// Check reports why the volume's directory cannot be used on this
	// node now (directory or the storage's marker gone), or nil.
	Check(ctx context.Context, volumeID string) error
}

// UsageReporter is a FilesystemNode that measures a volume itself, from
// the directory mounted at path: its quota and what its tree holds, where
// statfs would tell of the whole shared filesystem or round the quota.
type UsageReporter interface {
	Usage(ctx context.Context, path string) (Usage, error)
}

// Usage is a volume's size and use. Files 0 with MaxFiles 0: unknown.
type Usage struct {
	CapacityBytes, UsedBytes int64
	// Files counts the files and directories; MaxFiles is their limit (0:
	// none).
	Files, MaxFiles int64
}

// AttachmentCounter is implemented by backends that can count a node's
// attachments without listing every volume: the controller's per-node
// limit then costs one question rather than a listing that grows with
// the number of volumes.
type AttachmentCounter interface {
	NodeAttachments(ctx context.Context, nodeID string) (int64, error)
}

// PublishReader is a Controller that may know a volume well enough to
// attach it without reading it first: ControllerPublishVolume looks at the
// volume with VolumeForPublish, every other call with Volume.
type PublishReader interface {
	// VolumeForPublish is Volume for the Publish that follows, under the
	// volume's lock. It may answer from what the backend remembers (a
	// volume it has just created or detached) if its Publish checks, as
	// it attaches, what that answer could have wrong.
	VolumeForPublish(ctx context.Context, id string) (*Volume, error)
}

// VolumePager is a Controller that reads a page of its volumes without
// reading the others: ListVolumes then costs the page, not the store.
type VolumePager interface {
	// VolumesPage returns, in an order of the backend's that does not
	// change (by id, unless it says otherwise), the volumes that come
	// after the one whose id is after (which may be gone since), at most
	// max of them (0: all), and whether more follow.
	VolumesPage(ctx context.Context, after string, max int) ([]*Volume, bool, error)
}

// SnapshotPager is a Snapshotter that reads a page of its snapshots
// without reading the others.
type SnapshotPager interface {
	// SnapshotsPage returns, in an order as VolumesPage's, the snapshots
	// that come after the one whose id is after and that keep accepts
	// (nil: all), at most max of them (0: all), and whether more follow.
	SnapshotsPage(ctx context.Context, after string, max int, keep func(*Snapshot) bool) ([]*Snapshot, bool, error)
}

// NameFinder is a Controller that finds a volume or a snapshot by the name
// it was created with without listing them all.
type NameFinder interface {
	// VolumeNamed returns the volume named name, or an ErrNotFound error.
	VolumeNamed(ctx context.Context, name string) (*Volume, error)
	// SnapshotNamed returns the snapshot named name, or an ErrNotFound
	// error.
	SnapshotNamed(ctx context.Context, name string) (*Snapshot, error)
}
