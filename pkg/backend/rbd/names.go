package rbd

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
)

// Names. Every image and snapshot this driver makes is named from a hash
// of the CSI name and the cluster-unique prefix, so a retried CreateVolume
// finds the image of the attempt before it, and two swarms sharing a pool
// (with different prefixes) never touch each other's images:
//
//	<prefix>-vol-<32 hex>     a volume's image; its id is "<pool>/<image>"
//	<prefix>-snap-<32 hex>    a snapshot of a volume's image; its id is
//	                          "<pool>/<image>@<snapshot>"
//	<prefix>-clone-<32 hex>   the short-lived snapshot a clone is made from
//	<prefix>-index            the image whose metadata holds the records
//
// Only ids that parse, with this cluster's prefix, become command
// arguments or paths.
var (
	poolPattern     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$`)
	prefixPattern   = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)
	featuresPattern = regexp.MustCompile(`^[a-z][a-z-]*(,[a-z][a-z-]*)*$`)
	hexPattern      = regexp.MustCompile(`^[0-9a-f]{32}$`)
)

// validUser reports whether u may be a cephx user name (without
// "client."): it goes into keyrings and command arguments, so it follows
// the node id rule.
func validUser(u string) bool { return backend.ValidNodeID(u) }

// nameHash is the 32 hex digits that name the objects made for a CSI name.
func nameHash(name string) string {
	sum := sha256.Sum256([]byte(name))
	return hex.EncodeToString(sum[:16])
}

type names struct{ prefix string }

func (n names) volumeImage(hash string) string   { return n.prefix + "-vol-" + hash }
func (n names) snapshotName(hash string) string  { return n.prefix + "-snap-" + hash }
func (n names) cloneSnapshot(hash string) string { return n.prefix + "-clone-" + hash }
func (n names) index() string                    { return n.prefix + "-index" }

// imageRef names an image in a pool.
type imageRef struct{ pool, image string }

func (r imageRef) String() string { return r.pool + "/" + r.image }

// snapRef names a snapshot of an image.
type snapRef struct {
	imageRef
	snap string
}

func (r snapRef) String() string { return r.imageRef.String() + "@" + r.snap }

// parseVolumeID splits a volume id into its image and the hash its records
// are kept under. ok is false for anything this cluster did not make.
func (n names) parseVolumeID(id string) (ref imageRef, hash string, ok bool) {
	pool, image, found := strings.Cut(id, "/")
	if !found || !poolPattern.MatchString(pool) {
		return imageRef{}, "", false
	}
	hash, found = strings.CutPrefix(image, n.prefix+"-vol-")
	if !found || !hexPattern.MatchString(hash) {
		return imageRef{}, "", false
	}
	return imageRef{pool, image}, hash, true
}

// parseSnapshotID splits a snapshot id.
func (n names) parseSnapshotID(id string) (ref snapRef, hash string, ok bool) {
	vol, snap, found := strings.Cut(id, "@")
	if !found {
		return snapRef{}, "", false
	}
	img, _, ok := n.parseVolumeID(vol)
	if !ok {
		return snapRef{}, "", false
	}
	hash, found = strings.CutPrefix(snap, n.prefix+"-snap-")
	if !found || !hexPattern.MatchString(hash) {
		return snapRef{}, "", false
	}
	return snapRef{img, snap}, hash, true
}

// ours reports whether an image name is one of this cluster's volumes.
func (n names) ours(image string) bool {
	h, ok := strings.CutPrefix(image, n.prefix+"-vol-")
	return ok && hexPattern.MatchString(h)
}
