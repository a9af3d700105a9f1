package deploy

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// rbdPrograms are the programs the rbd flavour adds to PATH: the Ceph
// tools the rbd backend runs, and python3 for ceph.
var rbdPrograms = []string{"rbd", "rbd-nbd", "rbd-fuse", "ceph", "python3", "python3.11"}

// checkRBDFlavour compares the rbd flavour r with the plain build plain
// (both with CAPS=CAP_SYS_ADMIN), then runs its Ceph tools against a
// throwaway cluster.
func checkRBDFlavour(t *testing.T, plain, r string) {
	pc, rc := readConfig(t, plain), readConfig(t, r)
	root := filepath.Join(r, "rootfs")

	// config.json: the plain one plus the host's /sys, and the description.
	if len(rc.Mounts) == 0 || rc.Mounts[0].Name != "sys" || *rc.Mounts[0].Source != "/sys" ||
		rc.Mounts[0].Destination != "/sys" || !slices.Equal(rc.Mounts[0].Options, []string{"rbind"}) {
		raw, _ := json.MarshalIndent(rc.Mounts, "", "  ")
		t.Errorf("rbd flavour: want the host's /sys bind-mounted first, got mounts %s", raw)
	} else {
		rc.Mounts = rc.Mounts[1:]
	}
	if !strings.Contains(rc.Description, "rbd") {
		t.Errorf("rbd flavour: description %q does not name rbd", rc.Description)
	}
	rc.Description = pc.Description
	if !reflect.DeepEqual(pc, rc) {
		t.Errorf("rbd flavour: config.json differs from the plain one by more than /sys and the description")
	}

	// The rootfs holds the plain one, file for file.
	have := map[string]bool{}
	for _, l := range treeLines(t, root) {
		have[l] = true
	}
	for _, l := range treeLines(t, filepath.Join(plain, "rootfs")) {
		if !have[l] && !strings.HasPrefix(l, "usr/share/doc/swarm-csi-plugin/debian-packages ") {
			t.Errorf("rbd flavour: the plain rootfs has %s, the rbd one has not", l)
		}
	}
	pathEnv := envOf(rc, "PATH")
	for _, p := range append(slices.Clone(pathPrograms), rbdPrograms...) {
		if lookPath(root, pathEnv, p) == "" {
			t.Errorf("rbd flavour: %s is not on PATH", p)
		}
	}
	checkSize(t, root, maxRootfsRBD)

	runInRootfs(t, root, rc, 0, "ceph version 16.", "rbd", "--version")
	runInRootfs(t, root, rc, 0, "ceph version 16.", "rbd-nbd", "--version")
	runInRootfs(t, root, rc, 0, "ceph version 16.", "ceph", "--version")
	// No usage text: without a configuration it starts, then fails to reach
	// a monitor; its libraries are all there.
	runInRootfs(t, root, rc, 0, "failed to fetch mon config", "sh", "-c", "rbd-fuse --help 2>&1; true")

	// Against a cluster: what the rbd backend runs, as the user it runs as.
	testenv.Require(t, cephtest.Missing())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl, err := cephtest.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cl.Stop(); err != nil {
			t.Error(err)
		}
	}()
	for _, f := range []string{cl.Conf, cl.Keyring} {
		b, err := os.ReadFile(f)
		if err == nil {
			err = os.WriteFile(filepath.Join(root, "tmp", filepath.Base(f)), b, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	ceph := []string{"-c", "/tmp/" + filepath.Base(cl.Conf), "--id", cl.User, "--keyring", "/tmp/" + filepath.Base(cl.Keyring)}
	// Right after start the manager may not have reported yet: pools can be
	// empty, the stats are there.
	out := runInRootfs(t, root, rc, 0, `"total_bytes"`, append([]string{"ceph"}, append(ceph, "df", "--format", "json")...)...)
	t.Logf("ceph df in the rootfs: %.120s...", out)
	img := cl.Pool + "/deploy-test"
	runInRootfs(t, root, rc, 0, "", append([]string{"rbd"}, append(ceph, "create", "--size", "64M", img)...)...)
	runInRootfs(t, root, rc, 0, `"size":67108864`, append([]string{"rbd"}, append(ceph, "info", "--format", "json", img)...)...)
	runInRootfs(t, root, rc, 0, "", append([]string{"rbd"}, append(ceph, "rm", "--no-progress", img)...)...)
}
