// Package node implements the CSI Node service: it attaches a volume's
// device through the backend, formats and mounts it at the staging path,
// and bind-mounts it into containers.
package node

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/locks"
)

// Config is the node's identity and limits.
type Config struct {
	NodeID            string
	MaxVolumesPerNode int64
	// StateDir holds what the node remembers about staged volumes.
	StateDir string
	// Topology is reported by NodeGetInfo (Swarm ignores it, SwarmKit PR #3270).
	Topology map[string]string
	// Log receives what the node does not return as an error; nil discards.
	Log *slog.Logger
}

// Server is the CSI Node service.
type Server struct {
	csi.UnimplementedNodeServer
	be      backend.Node
	mounter Mounter
	state   *stateStore
	locks   *locks.Set
	cfg     Config
}

// New returns a node service and registers the node with the backend. ctx
// is the service's life: a backend that keeps trying to register in the
// background stops when it ends.
func New(ctx context.Context, be backend.Node, m Mounter, cfg Config) (*Server, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	st, err := newStateStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	if err := be.Register(ctx, cfg.NodeID); err != nil {
		return nil, err
	}
	return &Server{be: be, mounter: m, state: st, locks: locks.New(), cfg: cfg}, nil
}

// NodeGetInfo implements csi.NodeServer.
func (s *Server) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	resp := &csi.NodeGetInfoResponse{NodeId: s.cfg.NodeID, MaxVolumesPerNode: s.cfg.MaxVolumesPerNode}
	if len(s.cfg.Topology) > 0 {
		resp.AccessibleTopology = &csi.Topology{Segments: s.cfg.Topology}
	}
	return resp, nil
}

var nodeCapabilities = []csi.NodeServiceCapability_RPC_Type{
	csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
	csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
	csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
	csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
	csi.NodeServiceCapability_RPC_GET_STORAGE_HEALTH,
}

// NodeGetCapabilities implements csi.NodeServer.
func (s *Server) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	resp := &csi.NodeGetCapabilitiesResponse{}
	for _, c := range nodeCapabilities {
		resp.Capabilities = append(resp.Capabilities, &csi.NodeServiceCapability{
			Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: c}},
		})
	}
	return resp, nil
}

// cleanPath validates a staging or target path from a request: absolute,
// without ".." or other unclean parts, and not the root. It returns the path
// without a trailing slash.
func cleanPath(field, p string) (string, error) {
	trimmed := strings.TrimSuffix(p, "/")
	switch {
	case p == "":
		return "", csierr.Invalid("%s is required", field)
	case strings.ContainsRune(p, 0):
		return "", csierr.Invalid("%s contains a NUL byte", field)
	case !filepath.IsAbs(p) || trimmed == "" || filepath.Clean(trimmed) != trimmed:
		return "", csierr.Invalid("%s %q must be a clean absolute path other than /", field, p)
	}
	return trimmed, nil
}

func (s *Server) lock(volumeID string) (func(), error) { return s.locks.TryLock(volumeID) }
