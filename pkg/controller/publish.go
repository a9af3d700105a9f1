package controller

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/volcap"
)

// ControllerPublishVolume implements csi.ControllerServer. Refusing a
// single-writer volume to a second node is what keeps a filesystem from
// being mounted twice: on a drain, Swarm publishes to the new node before
// the old one has unpublished, and retries until the old one lets go
// (docs/swarm.md, "A drain publishes before it unpublishes").
func (s *Server) ControllerPublishVolume(ctx context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	switch {
	case req.GetVolumeId() == "":
		return nil, csierr.Invalid("volume_id is required")
	case req.GetNodeId() == "":
		return nil, csierr.Invalid("node_id is required")
	}
	// Swarm always sends mount access here, whatever the volume's type, so
	// only the access mode is checked against the volume.
	if err := volcap.Check(req.GetVolumeCapability()); err != nil {
		return nil, err
	}
	release, err := s.lock(volumeKey(req.GetVolumeId()))
	if err != nil {
		return nil, err
	}
	defer release()
	if s.countsNodeLimit() {
		// Publishes of other volumes to the node take turns, so that each
		// counts the node's volumes with the one before it attached.
		// They are not refused: a node gets several volumes at once.
		// Where nothing is counted (the storage's own limit), they need
		// not wait for each other.
		releaseNode, err := s.locks.Wait(ctx, nodeKey(req.GetNodeId()))
		if err != nil {
			return nil, err
		}
		defer releaseNode()
	}

	v, all, err := s.publishedVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	known, err := s.be.NodeKnown(ctx, req.GetNodeId())
	if err != nil {
		return nil, err
	}
	if !known {
		return nil, csierr.NotFound("node %q has not registered with the %s backend", req.GetNodeId(), s.info.Name)
	}
	mode := req.GetVolumeCapability().GetAccessMode().GetMode()
	// A volume created read-only stays read-only, whatever the request says.
	readOnly := req.GetReadonly() || volcap.ReadOnly(mode) || volcap.ReadOnly(volcap.ParseMode(v.AccessMode))
	want := backend.Attachment{NodeID: req.GetNodeId(), ReadOnly: readOnly}

	if cur, ok := v.AttachedTo(want.NodeID); ok {
		if cur.ReadOnly != want.ReadOnly {
			return nil, fmt.Errorf("%w: volume %s is published to node %s with readonly=%t", csierr.ErrAlreadyExists, v.ID, cur.NodeID, cur.ReadOnly)
		}
	} else {
		if err := conflict(v, mode, want); err != nil {
			return nil, err
		}
		if err := s.checkNodeLimit(ctx, all, want.NodeID); err != nil {
			return nil, err
		}
	}
	pc, err := s.be.Publish(ctx, v, want)
	if err != nil {
		return nil, err
	}
	return &csi.ControllerPublishVolumeResponse{PublishContext: pc}, nil
}

// conflict refuses an attachment that the access mode of the volume or of
// the request does not allow beside the existing ones.
func conflict(v *backend.Volume, mode volcap.Mode, want backend.Attachment) error {
	if len(v.Attachments) == 0 {
		return nil
	}
	other := v.Attachments[0]
	created := volcap.ParseMode(v.AccessMode)
	if volcap.SingleNode(mode) || volcap.SingleNode(created) {
		return csierr.Precondition("volume %s (%s) is still published to node %s; it can move once that node has unpublished it", v.ID, v.AccessMode, other.NodeID)
	}
	singleWriter := mode == csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER ||
		created == csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER
	if singleWriter && !want.ReadOnly {
		for _, a := range v.Attachments {
			if !a.ReadOnly {
				return csierr.Precondition("volume %s (%s) already has a writer on node %s", v.ID, v.AccessMode, a.NodeID)
			}
		}
	}
	return nil
}

// publishedVolume returns the volume, and when the per-node limit is
// counted in a listing every volume as well: one listing serves both,
// which saves a backend whose reads are costly (rbd) a call. The volume is
// looked at as a PublishReader looks at a volume to publish.
func (s *Server) publishedVolume(ctx context.Context, id string) (*backend.Volume, []*backend.Volume, error) {
	look := s.be.Volume
	if r, ok := s.be.(backend.PublishReader); ok {
		look = r.VolumeForPublish
	}
	if _, counts := s.be.(backend.AttachmentCounter); !s.countsNodeLimit() || counts {
		v, err := look(ctx, id)
		return v, nil, err
	}
	all, err := s.be.ListVolumes(ctx)
	if err != nil {
		return nil, nil, err
	}
	for _, v := range all {
		if v.ID == id {
			return v, all, nil
		}
	}
	// Not listed: the look says why (NotFound, with the backend's reason).
	v, err := look(ctx, id)
	return v, all, err
}

// countsNodeLimit reports whether the controller counts a node's volumes
// against the per-node limit: there is one, and it is not the storage's
// own, which the storage enforces when attaching.
func (s *Server) countsNodeLimit() bool {
	storageOwn := s.info.MaxVolumesPerNode > 0 && s.maxPerNode >= s.info.MaxVolumesPerNode
	return s.maxPerNode > 0 && !storageOwn
}

// checkNodeLimit refuses a new attachment to a node that has the most
// volumes it takes, as the backend counts them or counted in vols.
func (s *Server) checkNodeLimit(ctx context.Context, vols []*backend.Volume, nodeID string) error {
	if !s.countsNodeLimit() {
		return nil
	}
	n := int64(0)
	if c, ok := s.be.(backend.AttachmentCounter); ok {
		var err error
		if n, err = c.NodeAttachments(ctx, nodeID); err != nil {
			return err
		}
	} else {
		for _, v := range vols {
			if _, ok := v.AttachedTo(nodeID); ok {
				n++
			}
		}
	}
	if n >= s.maxPerNode {
		return fmt.Errorf("%w: node %s already has %d volumes published, the most it takes", csierr.ErrResourceExhausted, nodeID, n)
	}
	return nil
}

// ControllerUnpublishVolume implements csi.ControllerServer. An empty node
// id unpublishes the volume from every node.
func (s *Server) ControllerUnpublishVolume(ctx context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	release, err := s.lockVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer release()
	nodes := []string{req.GetNodeId()}
	if req.GetNodeId() == "" {
		v, err := s.be.Volume(ctx, req.GetVolumeId())
		if err != nil {
			return &csi.ControllerUnpublishVolumeResponse{}, ignoreNotFound(err)
		}
		nodes = nodeIDs(v)
	}
	for _, n := range nodes {
		if err := s.be.Unpublish(ctx, req.GetVolumeId(), n); err != nil {
			return nil, err
		}
	}
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}

func ignoreNotFound(err error) error {
	if csierr.Code(err) == csierr.Code(csierr.ErrNotFound) {
		return nil
	}
	return err
}

func wrapInt(v int64) *wrapperspb.Int64Value { return wrapperspb.Int64(v) }
