package rbd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os/exec"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// Attach modes: how a node makes an image a block device.
const (
	// ModeKRBD maps images with the kernel's rbd driver (rbd device map
	// -t krbd): the fastest, and what production nodes should use.
	ModeKRBD = "krbd"
	// ModeNBD maps images through rbd-nbd, librbd in user space behind an
	// nbd device: for kernels whose rbd driver lacks an image feature.
	ModeNBD = "nbd"
	// ModeFuse exposes the image as a file with rbd-fuse and attaches the
	// file to a loop device: needs neither module, for test machines.
	ModeFuse = "fuse"
)

// Modes are the attach modes, production default first.
var Modes = []string{ModeKRBD, ModeNBD, ModeFuse}

// attacher makes images block devices on this node, and finds them again
// from the image alone (Swarm may send no publish context, SwarmKit #3276).
type attacher interface {
	// attach maps the image of v, or returns its device if mapped, after
	// making the device see at least v's size.
	attach(ctx context.Context, cr creds, ref imageRef, hash string, v *backend.Volume) (string, error)
	// detach unmaps the image; an image not mapped is no error.
	detach(ctx context.Context, ref imageRef, hash string) error
	// device returns the image's device on this node, or "".
	device(ctx context.Context, ref imageRef, hash string) (string, error)
	// tools are the commands the mode runs.
	tools() []string
}

// NodeSide is the rbd backend as the node service uses it.
type NodeSide struct {
	*Backend
	mode string
	att  attacher
	// registerEvery is how often Register tries again (registerRetry).
	registerEvery time.Duration
}

var _ backend.Node = (*NodeSide)(nil)

// ForNode returns the node side of b for the node named nodeID, attaching
// images in the given mode.
func (b *Backend) ForNode(nodeID, mode string) (*NodeSide, error) {
	sum := sha256.Sum256([]byte(nodeID))
	tag := hex.EncodeToString(sum[:6])
	n := &NodeSide{Backend: b, mode: mode, registerEvery: registerRetry}
	switch mode {
	case ModeKRBD, ModeNBD:
		n.att = &mapper{b: b, kind: mode}
	case ModeFuse:
		n.att = newFuse(b, tag)
	default:
		return nil, fmt.Errorf("attach mode %q: want one of %v", mode, Modes)
	}
	return n, nil
}

// registerRetry is how often a node that could not register at start tries
// again.
const registerRetry = 15 * time.Second

// Register implements backend.Node: the node's record in the index is what
// ControllerPublishVolume checks. A cluster that is unreachable at start
// must not stop the driver (Swarm needs its Probe): the node then keeps
// trying in the background until it succeeds or ctx, the driver's life,
// ends. A refused key stops it with the reason.
func (n *NodeSide) Register(ctx context.Context, nodeID string) error {
	if !backend.ValidNodeID(nodeID) {
		return csierr.Invalid("node id %q: use letters, digits, '.', '_' and '-' (at most 128)", nodeID)
	}
	err := n.register(ctx, nodeID)
	if err == nil || errors.Is(err, KindAuth) || errors.Is(err, KindDenied) {
		return err
	}
	n.cfg.Log.Warn("cannot register with Ceph yet; retrying in the background", "node", nodeID, "error", err)
	go n.retryRegister(ctx, nodeID)
	return nil
}

// retryRegister registers the node every registerEvery until it succeeds
// or ctx ends.
func (n *NodeSide) retryRegister(ctx context.Context, nodeID string) {
	for {
		select {
		case <-ctx.Done():
			n.cfg.Log.Info("stopped trying to register with Ceph", "node", nodeID, "reason", context.Cause(ctx))
			return
		case <-time.After(n.registerEvery):
		}
		err := n.register(ctx, nodeID)
		if err == nil {
			n.cfg.Log.Info("registered with Ceph", "node", nodeID)
			return
		}
		if ctx.Err() == nil {
			n.cfg.Log.Warn("cannot register with Ceph yet", "node", nodeID, "error", err)
		}
	}
}

func (n *NodeSide) register(ctx context.Context, nodeID string) error {
	var rec nodeRecord
	err := n.index.get(ctx, n.creds, nodeKeyPrefix+nodeID, &rec)
	if err == nil && rec.AttachMode == n.mode {
		return nil
	}
	if err != nil && !errors.Is(err, KindNotFound) {
		return err
	}
	rec = nodeRecord{RegisteredAt: n.now().UTC(), AttachMode: n.mode}
	return n.index.set(ctx, n.creds, nodeKeyPrefix+nodeID, &rec)
}

// Attach implements backend.Node. Nothing but the volume is needed: the
// image follows from its id.
func (n *NodeSide) Attach(ctx context.Context, v *backend.Volume, _ map[string]string) (string, error) {
	ref, hash, ok := n.names.parseVolumeID(v.ID)
	if !ok {
		return "", csierr.NotFound("volume %q is not an rbd volume id of this cluster", v.ID)
	}
	cr, err := n.credsFor(ctx)
	if err != nil {
		return "", err
	}
	return n.att.attach(ctx, cr, ref, hash, v)
}

// Detach implements backend.Node.
func (n *NodeSide) Detach(ctx context.Context, volumeID string) error {
	ref, hash, ok := n.names.parseVolumeID(volumeID)
	if !ok {
		return nil
	}
	return n.att.detach(ctx, ref, hash)
}

// Device implements backend.Node.
func (n *NodeSide) Device(ctx context.Context, volumeID string) (string, error) {
	ref, hash, ok := n.names.parseVolumeID(volumeID)
	if !ok {
		return "", nil
	}
	return n.att.device(ctx, ref, hash)
}

// Health implements backend.Node: the mode's tools are installed and the
// cluster answers.
func (n *NodeSide) Health(ctx context.Context) error {
	for _, t := range n.att.tools() {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("attach mode %s needs %s: %w", n.mode, t, err)
		}
	}
	_, err := n.info(ctx, n.creds, n.index.image)
	if err != nil && !errors.Is(err, KindNotFound) {
		return err
	}
	return nil
}
