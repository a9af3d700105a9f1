// Package controller implements the CSI Controller service on top of a
// backend.Controller. It validates requests, enforces access modes and
// per-node limits, and leaves storage to the backend.
package controller

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/locks"
)

// Server is the CSI Controller service and the GroupController service.
type Server struct {
	csi.UnimplementedControllerServer
	csi.UnimplementedGroupControllerServer
	be         backend.Controller
	info       backend.Info
	locks      *locks.Set
	maxPerNode int64
	createErrs *createErrors // the last failure of each name (createerrors.go)

	// The backend's optional features; nil when it lacks one.
	expander backend.Expander
	modifier backend.Modifier
	capacity backend.CapacityReporter
	snaps    backend.Snapshotter
	cloner   backend.Cloner
}

// New returns a controller that keeps at most maxVolumesPerNode volumes
// published to one node (0: no limit). It serves the optional features the
// backend implements.
func New(be backend.Controller, maxVolumesPerNode int64) *Server {
	s := &Server{be: be, info: be.Info(), locks: locks.New(), maxPerNode: maxVolumesPerNode,
		createErrs: newCreateErrors(maxCreateErrors)}
	s.expander, _ = be.(backend.Expander)
	s.modifier, _ = be.(backend.Modifier)
	s.capacity, _ = be.(backend.CapacityReporter)
	s.snaps, _ = be.(backend.Snapshotter)
	s.cloner, _ = be.(backend.Cloner)
	return s
}

// capabilities lists what the controller serves with this backend.
func (s *Server) capabilities() []csi.ControllerServiceCapability_RPC_Type {
	caps := []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		// Swarm publishes only through a controller that has this
		// (docs/swarm.md, "Identity and Probe").
		csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES_PUBLISHED_NODES,
		csi.ControllerServiceCapability_RPC_GET_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_PUBLISH_READONLY,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	}
	if s.expander != nil {
		caps = append(caps, csi.ControllerServiceCapability_RPC_EXPAND_VOLUME)
	}
	if s.capacity != nil {
		caps = append(caps, csi.ControllerServiceCapability_RPC_GET_CAPACITY)
	}
	if s.snaps != nil {
		caps = append(caps,
			csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
			csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
			csi.ControllerServiceCapability_RPC_GET_SNAPSHOT)
	}
	if s.cloner != nil {
		caps = append(caps, csi.ControllerServiceCapability_RPC_CLONE_VOLUME)
	}
	if s.modifier != nil {
		caps = append(caps, csi.ControllerServiceCapability_RPC_MODIFY_VOLUME)
	}
	return caps
}

// ControllerGetCapabilities implements csi.ControllerServer.
func (s *Server) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	resp := &csi.ControllerGetCapabilitiesResponse{}
	for _, c := range s.capabilities() {
		resp.Capabilities = append(resp.Capabilities, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: c}},
		})
	}
	return resp, nil
}

// PluginCapabilities are the plugin capabilities (Identity) this
// controller offers with its backend.
func (s *Server) PluginCapabilities() []*csi.PluginCapability {
	svcs := []csi.PluginCapability_Service_Type{csi.PluginCapability_Service_CONTROLLER_SERVICE}
	if len(s.info.Topology) > 0 {
		svcs = append(svcs, csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS)
	}
	if s.snaps != nil {
		svcs = append(svcs, csi.PluginCapability_Service_GROUP_CONTROLLER_SERVICE,
			csi.PluginCapability_Service_SNAPSHOT_ACCESSIBILITY_CONSTRAINTS)
	}
	var caps []*csi.PluginCapability
	for _, t := range svcs {
		caps = append(caps, &csi.PluginCapability{
			Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}},
		})
	}
	if s.expander != nil {
		caps = append(caps, &csi.PluginCapability{
			Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{
				Type: csi.PluginCapability_VolumeExpansion_ONLINE,
			}},
		})
	}
	return caps
}

// require returns an Unimplemented error unless the backend has the
// feature.
func (s *Server) require(has bool, feature string) error {
	if has {
		return nil
	}
	return fmt.Errorf("%w: the %s backend has no %s", csierr.ErrUnimplemented, s.info.Name, feature)
}

// lock takes the operation locks for keys, failing with Aborted if busy.
func (s *Server) lock(keys ...string) (func(), error) { return s.locks.TryLock(keys...) }

// lockVolume refuses a request without a volume id, and takes the
// volume's lock.
func (s *Server) lockVolume(id string) (func(), error) {
	if id == "" {
		return nil, csierr.Invalid("volume_id is required")
	}
	return s.lock(volumeKey(id))
}

func volumeKey(id string) string      { return "volume " + id }
func snapshotKey(id string) string    { return "snapshot " + id }
func nodeKey(id string) string        { return "node " + id }
func volumeNameKey(n string) string   { return "volume name " + n }
func snapshotNameKey(n string) string { return "snapshot name " + n }
