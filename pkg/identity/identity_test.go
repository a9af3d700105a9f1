package identity

import (
	"context"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

func TestIdentity(t *testing.T) {
	s := New("swarm-csi", "v1.2.3", &csi.PluginCapability{
		Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}},
	}, &csi.PluginCapability{
		Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{Type: csi.PluginCapability_VolumeExpansion_ONLINE}},
	})
	ctx := context.Background()
	info, err := s.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil || info.GetName() != "swarm-csi" || info.GetVendorVersion() != "v1.2.3" {
		t.Fatalf("GetPluginInfo = %v, %v", info, err)
	}
	probe, err := s.Probe(ctx, &csi.ProbeRequest{})
	if err != nil || !probe.GetReady().GetValue() {
		t.Fatalf("Probe must answer ready at once: %v, %v", probe, err)
	}
	caps, err := s.GetPluginCapabilities(ctx, &csi.GetPluginCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var controller, online bool
	for _, c := range caps.GetCapabilities() {
		controller = controller || c.GetService().GetType() == csi.PluginCapability_Service_CONTROLLER_SERVICE
		online = online || c.GetVolumeExpansion().GetType() == csi.PluginCapability_VolumeExpansion_ONLINE
	}
	if !controller || !online {
		t.Fatalf("capabilities %v: want the CONTROLLER_SERVICE and ONLINE expansion given", caps)
	}
}
