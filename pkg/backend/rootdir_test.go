package backend

import "testing"

// What a volume's record or labels keep reads back the same.
func TestRootDirParametersReadBack(t *testing.T) {
	for _, r := range []RootDir{{UID: 1000, GID: 1000, Mode: 0o750}, {Mode: 0}, {UID: 1<<32 - 2, GID: 7, Mode: 0o7777}, {GID: 5, Mode: 0o2770}} {
		got, err := ParseRootDir(r.Parameters())
		if err != nil || got == nil || *got != r {
			t.Errorf("%+v: read back %+v, %v", r, got, err)
		}
	}
	if got, err := ParseRootDir(FreshRoot.Parameters()); got != nil || err != nil {
		t.Errorf("the root as mkfs makes it: %+v, %v; want nil", got, err)
	}
	if got, err := ParseRootDir(map[string]string{"fsType": "xfs"}); got != nil || err != nil {
		t.Errorf("without the parameters: %+v, %v; want nil", got, err)
	}
}
