package sanity

import (
	"regexp"
	"testing"
)

// The dir backend: volumes are directories of the data directory, here a
// local one (the test's own), so the missing-mount guard is told to accept
// the root filesystem (the Swarm suite tests the guard on a shared mount).
// Mount access only: a dir volume has no device.
func init() {
	modes = append(modes, mode{
		name:       "dir",
		accessType: "mount",
		setup: func(*testing.T, string) ([]string, []string) {
			return []string{"--backend", "dir", "--dir-allow-local=true"}, nil
		},
		unsupported: dirUnsupported,
	})
}

// dirUnsupported are the specs csi-test skips for the dir backend, which
// does not advertise these features.
var dirUnsupported = []unsupportedSpecs{
	{regexp.MustCompile(`^Controller Service \[Controller Server\] CreateVolume should (not )?create volume with (a|an invalid) volume attribute class$`),
		"the dir backend has no mutable parameters: MODIFY_VOLUME is not advertised"},
	{regexp.MustCompile(`^ModifyVolume \[Controller Server\] `),
		"the dir backend has no mutable parameters: MODIFY_VOLUME is not advertised"},
	{regexp.MustCompile(`^ExpandVolume \[Controller Server\] `),
		"a dir volume's size is recorded, not enforced, so there is nothing to grow: EXPAND_VOLUME is not advertised"},
}
