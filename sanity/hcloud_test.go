package sanity

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend/hcloud/fakecloud"
)

// The hcloud modes run the driver's hcloud backend against the fake
// Hetzner Cloud API (package fakecloud) in this test process: attaching a
// volume gives the fake server a real loop device under its by-id
// directory, so staging and publishing mount real filesystems.
func init() {
	for _, m := range []mode{
		{name: "hcloud-ext4", accessType: "mount", params: map[string]string{"fsType": "ext4"}},
		{name: "hcloud-xfs", accessType: "mount", params: map[string]string{"fsType": "xfs"}, requires: []string{"mkfs.xfs"}},
		{name: "hcloud-block", accessType: "block"},
	} {
		m.setup = setupHcloud
		m.mutable = map[string]string{} // hcloud has no mutable parameters
		m.unsupported = hcloudUnsupported
		modes = append(modes, m)
	}
	modes = append(modes, mode{name: "hcloud-defaults", defaults: true, setup: setupHcloud,
		unsupported: append([]unsupportedSpecs{attachLimitOff}, hcloudUnsupported...)})
}

// hcloudUnsupported are the specs csi-test skips for the hcloud backend,
// which advertises none of these features because Hetzner Cloud volumes
// lack them.
var hcloudUnsupported = []unsupportedSpecs{
	{regexp.MustCompile(`^Controller Service \[Controller Server\] GetCapacity `),
		"Hetzner Cloud reports no free capacity: GET_CAPACITY is not advertised"},
	{regexp.MustCompile(`^Controller Service \[Controller Server\] CreateVolume should (create volume from an existing source snapshot|fail when the volume source snapshot is not found)$`),
		"Hetzner Cloud volumes have no snapshots"},
	{regexp.MustCompile(`^Controller Service \[Controller Server\] CreateVolume should (create volume from an existing source volume|fail when the volume source volume is not found)$`),
		"Hetzner Cloud volumes cannot be copied: CLONE_VOLUME is not advertised"},
	{regexp.MustCompile(`^Controller Service \[Controller Server\] CreateVolume should (not )?create volume with (a|an invalid) volume attribute class$`),
		"the hcloud backend has no mutable parameters: MODIFY_VOLUME is not advertised"},
	{regexp.MustCompile(`^ModifyVolume \[Controller Server\] `),
		"the hcloud backend has no mutable parameters: MODIFY_VOLUME is not advertised"},
	{regexp.MustCompile(`^(CreateSnapshot|DeleteSnapshot|GetSnapshot|ListSnapshots) \[Controller Server\] `),
		"Hetzner Cloud volumes have no snapshots: no snapshot capability is advertised"},
	{regexp.MustCompile(`^GroupController Service \[GroupController (Server|VolumeGroupSnapshots)\] `),
		"the GroupController service serves only volume group snapshots, which Hetzner Cloud lacks: it is not advertised"},
}

// hcloudSanityToken is the API token the fake and the driver share.
const hcloudSanityToken = "sanity-token-5d1e0c"

// setupHcloud starts the fake cloud with one server and points the driver
// at it: the API endpoint, the token file, and the server's metadata
// service and by-id directory, as on a real Hetzner Cloud server.
func setupHcloud(t *testing.T, dir string) (args, env []string) {
	t.Helper()
	cloud, err := fakecloud.Start(fakecloud.Options{Dir: filepath.Join(dir, "fakecloud"), Token: hcloudSanityToken,
		ActionDelay: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("starting the fake Hetzner Cloud: %v", err)
	}
	// Registered before the driver's cleanup, so it runs after the driver
	// stopped: by then csi-sanity has deleted every volume it made.
	t.Cleanup(func() {
		if err := cloud.WaitIdle(30 * time.Second); err != nil {
			t.Error(err)
		}
		if vols := cloud.Volumes(); len(vols) > 0 {
			t.Errorf("the fake cloud still has %d volumes after csi-sanity: %+v", len(vols), vols)
		}
		if left := cloud.Leftovers(); len(left) > 0 {
			t.Errorf("the fake cloud holds leftovers: %v", left)
		}
		t.Logf("the driver made %d Hetzner Cloud API requests", cloud.Requests().Total)
		// The driver logs every call at debug level; never the token.
		if log, err := os.ReadFile(filepath.Join(dir, "driver.log")); err != nil {
			t.Errorf("reading the driver's log: %v", err)
		} else if bytes.Contains(log, []byte(hcloudSanityToken)) {
			t.Errorf("the driver's log contains the API token")
		}
		if err := cloud.Close(); err != nil {
			t.Errorf("closing the fake cloud: %v", err)
		}
	})
	server, err := cloud.AddServer("sanity-node", "fsn1")
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "hcloud-token")
	if err := os.WriteFile(tokenFile, []byte(hcloudSanityToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args = []string{
		"--backend", "hcloud",
		"--hcloud-endpoint", cloud.URL(),
		"--hcloud-cluster", "sanity",
		"--hcloud-metadata-endpoint", server.MetadataURL,
		"--hcloud-device-dir", server.DeviceDir,
	}
	return args, []string{"HCLOUD_TOKEN_FILE=" + tokenFile}
}
