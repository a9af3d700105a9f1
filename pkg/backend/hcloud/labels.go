package hcloud

import (
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/volcap"
)

// A volume's CSI settings live in its labels, so that nothing is kept
// outside the API.
const (
	labelPrefix = "swarm-csi/"
	// LabelCluster holds the cluster name: a swarm sees only its own.
	LabelCluster = "swarm-csi/cluster"
	// LabelName holds a hash of the CSI volume name, which a retried
	// CreateVolume looks the volume up by.
	LabelName = "swarm-csi/name"
	// labelFs is "ext4", "xfs", or "block" for a raw block volume.
	labelFs = "swarm-csi/fs"
	// labelAccessMode is the CSI access mode, e.g. SINGLE_NODE_WRITER.
	labelAccessMode = "swarm-csi/access-mode"
	// labelReadOnly is "true" while the volume is published read-only.
	labelReadOnly = "swarm-csi/readonly"
	// labelMkfs and labelMount are the prefixes of the labels holding
	// mkfsOptions and mountOptions, base32 in chunks of a label value's 63
	// characters.
	labelMkfs  = "swarm-csi/mkfs-"
	labelMount = "swarm-csi/mount-"

	// labelRoot is the prefix of the labels holding the uid, gid and mode
	// of the volume's root directory, as given to CreateVolume.
	labelRoot = "swarm-csi/root-"

	mkfsChunks = 4
	chunkLen   = 63
	// MaxMkfsOptions is how long mkfsOptions (and mountOptions) may be:
	// what mkfsChunks label values hold.
	MaxMkfsOptions = mkfsChunks * chunkLen * 5 / 8
	blockFs        = "block"
)

// labelValuePattern is Hetzner Cloud's rule for label values.
var labelValuePattern = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)

var mkfsEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// nameHash is the label value that names a CSI volume name.
func nameHash(name string) string {
	sum := sha256.Sum256([]byte(name))
	return hex.EncodeToString(sum[:24])
}

// volumeName is the Hetzner Cloud name of a volume: unique per project,
// so it includes the cluster. The API's uniqueness check stops a second
// volume for the same CSI name even when two creations race.
func (b *Backend) volumeName(name string) string {
	sum := sha256.Sum256([]byte(b.cfg.Cluster + "\x00" + name))
	return "csi-" + hex.EncodeToString(sum[:20])
}

// clusterSelector selects this cluster's volumes.
func (b *Backend) clusterSelector() string { return LabelCluster + "=" + b.cfg.Cluster }

// labelsFor returns the labels of a new volume.
func (b *Backend) labelsFor(spec backend.VolumeSpec) (map[string]string, error) {
	fs := spec.FsType
	if spec.Block {
		fs = blockFs
	}
	labels := map[string]string{
		LabelCluster:    b.cfg.Cluster,
		LabelName:       nameHash(spec.Name),
		labelFs:         fs,
		labelAccessMode: spec.AccessMode,
	}
	if err := putChunks(labels, labelMkfs, "mkfsOptions", spec.MkfsOptions); err != nil {
		return nil, err
	}
	if err := putChunks(labels, labelMount, "mountOptions", spec.MountOptions); err != nil {
		return nil, err
	}
	if spec.Root != nil {
		for k, v := range spec.Root.Parameters() {
			labels[labelRoot+k] = v
		}
	}
	return labels, nil
}

// putChunks stores value in the labels named prefix0, prefix1...
func putChunks(labels map[string]string, prefix, param, value string) error {
	if len(value) > MaxMkfsOptions {
		return csierr.Invalid("%s are %d bytes; the hcloud backend keeps them in the volume's labels, which hold %d", param, len(value), MaxMkfsOptions)
	}
	enc := mkfsEncoding.EncodeToString([]byte(value))
	for i := 0; len(enc) > 0; i++ {
		n := min(chunkLen, len(enc))
		labels[prefix+strconv.Itoa(i)] = enc[:n]
		enc = enc[n:]
	}
	return nil
}

// getChunks reads back what putChunks stored.
func getChunks(hv *hcloud.Volume, prefix, param string) (string, error) {
	var enc strings.Builder
	for i := 0; i < mkfsChunks; i++ {
		enc.WriteString(hv.Labels[prefix+strconv.Itoa(i)])
	}
	value, err := mkfsEncoding.DecodeString(enc.String())
	if err != nil {
		return "", fmt.Errorf("%w: volume %d has %s labels that do not decode: its labels were changed outside swarm-csi", csierr.ErrFailedPrecondition, hv.ID, param)
	}
	return string(value), nil
}

// ours reports whether a Hetzner volume belongs to this cluster.
func (b *Backend) ours(v *hcloud.Volume) bool {
	return v != nil && v.Labels[LabelCluster] == b.cfg.Cluster && v.Labels[LabelName] != ""
}

// toVolume reads a volume of this cluster back from the API's view.
func toVolume(hv *hcloud.Volume) (*backend.Volume, error) {
	v := &backend.Volume{
		ID:        strconv.FormatInt(hv.ID, 10),
		CreatedAt: hv.Created,
		VolumeSpec: backend.VolumeSpec{
			CapacityBytes: int64(hv.Size) * backend.GiB,
			AccessMode:    hv.Labels[labelAccessMode],
		},
	}
	switch fs := hv.Labels[labelFs]; {
	case fs == blockFs:
		v.Block = true
	case volcap.CheckFsType(fs) == nil && fs != "":
		v.FsType = fs
	default:
		return nil, fmt.Errorf("%w: volume %d has label %s=%q, not ext4, xfs or block: its labels were changed outside swarm-csi", csierr.ErrFailedPrecondition, hv.ID, labelFs, fs)
	}
	if m := volcap.ParseMode(v.AccessMode); m == csi.VolumeCapability_AccessMode_UNKNOWN {
		return nil, fmt.Errorf("%w: volume %d has label %s=%q, no access mode: its labels were changed outside swarm-csi", csierr.ErrFailedPrecondition, hv.ID, labelAccessMode, v.AccessMode)
	}
	var err error
	if v.MkfsOptions, err = getChunks(hv, labelMkfs, "mkfsOptions"); err != nil {
		return nil, err
	}
	if v.MountOptions, err = getChunks(hv, labelMount, "mountOptions"); err != nil {
		return nil, err
	}
	root := map[string]string{}
	for k, val := range hv.Labels {
		if p, ok := strings.CutPrefix(k, labelRoot); ok {
			root[p] = val
		}
	}
	if v.Root, err = backend.ParseRootDir(root); err != nil {
		return nil, fmt.Errorf("%w: volume %d has root labels that do not parse (%v): its labels were changed outside swarm-csi", csierr.ErrFailedPrecondition, hv.ID, err)
	}
	if hv.Server != nil {
		v.Attachments = []backend.Attachment{{NodeID: strconv.FormatInt(hv.Server.ID, 10), ReadOnly: hv.Labels[labelReadOnly] == "true"}}
	}
	return v, nil
}
