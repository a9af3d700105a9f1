package harness

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
)

// TestPluginInputsHash: the cache key of a built plugin changes with each
// of its inputs, and only with them.
func TestPluginInputsHash(t *testing.T) {
	if err := exec.Command("dpkg-query", "-W", "librados-dev", "librbd-dev").Run(); err != nil {
		testenv.Require(t, "needs librados-dev and librbd-dev (scripts/install-deps)")
	}
	ctx := context.Background()
	root := t.TempDir()
	write := func(rel, content string) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"deploy/build-plugin", "cmd/swarm-csi/main.go", "pkg/backend/rbd/rbd.go", "internal/x/x.go", "go.mod", "go.sum"} {
		write(f, f)
	}
	write("e2e/e2e_test.go", "e2e")
	hash := func(caps, flavour string) string {
		t.Helper()
		h, err := pluginInputsHash(ctx, root, caps, flavour)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	base := hash("CAP_SYS_ADMIN", "")
	if again := hash("CAP_SYS_ADMIN", ""); again != base {
		t.Errorf("same inputs: %s, then %s", base, again)
	}
	seen := map[string]string{base: "the base"}
	differs := func(what, h string) {
		t.Helper()
		if prev, ok := seen[h]; ok {
			t.Errorf("%s: the hash is that of %s", what, prev)
		}
		seen[h] = what
	}
	differs("the rbd flavour", hash("CAP_SYS_ADMIN", "rbd"))
	differs("other capabilities", hash("CAP_SYS_ADMIN,CAP_SYS_RESOURCE", ""))
	for _, f := range []string{"deploy/build-plugin", "pkg/backend/rbd/rbd.go", "internal/x/x.go", "go.sum"} {
		write(f, f+" changed")
		differs(f+" changed", hash("CAP_SYS_ADMIN", ""))
	}
	// What the plugin is not built from leaves the key alone.
	before := hash("CAP_SYS_ADMIN", "")
	write("e2e/e2e_test.go", "e2e changed")
	if after := hash("CAP_SYS_ADMIN", ""); after != before {
		t.Errorf("a change in e2e/ changed the hash")
	}
}
