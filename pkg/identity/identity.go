// Package identity implements the CSI Identity service.
package identity

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Server is the CSI Identity service.
type Server struct {
	csi.UnimplementedIdentityServer
	name, version string
	caps          []*csi.PluginCapability
}

// New returns the identity of a driver called name, at version, with the
// given plugin capabilities.
func New(name, version string, caps ...*csi.PluginCapability) *Server {
	return &Server{name: name, version: version, caps: caps}
}

// GetPluginInfo implements csi.IdentityServer.
func (s *Server) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: s.name, VendorVersion: s.version}, nil
}

// GetPluginCapabilities implements csi.IdentityServer.
func (s *Server) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: s.caps}, nil
}

// Probe implements csi.IdentityServer. It answers ready at once: SwarmKit
// caches the client when the plugin starts, and a Probe that fails then
// leaves the manager treating the plugin as having no controller until the
// next leader change (docs/swarm.md, "Identity and Probe").
func (s *Server) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}
