package hcloud

import (
	"context"
	"testing"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
)

// The owner and mode of a volume's root live in its labels, and reach the
// node through the publish context or, without it, the API.
func TestRootDirInLabels(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	s := spec("owned")
	s.Root = &backend.RootDir{UID: 1000, GID: 1000, Mode: 0o2750}
	v := must[*backend.Volume](t)(e.be.CreateVolume(ctx, s))
	if v.Root == nil || *v.Root != *s.Root {
		t.Fatalf("created with root %+v, want %+v", v.Root, s.Root)
	}
	vols := e.cloud.Volumes()
	if l := vols[0].Labels; l[labelRoot+"uid"] != "1000" || l[labelRoot+"gid"] != "1000" || l[labelRoot+"mode"] != "02750" {
		t.Fatalf("labels %v", l)
	}
	plain := must[*backend.Volume](t)(e.be.CreateVolume(ctx, spec("plain")))
	if plain.Root != nil {
		t.Fatalf("a volume without uid, gid or mode has root %+v", plain.Root)
	}

	pc := must[map[string]string](t)(e.be.Publish(ctx, v, backend.Attachment{NodeID: sid(e.servers[0])}))
	fromPC := must[*backend.Volume](t)(e.node(t, 0).Volume(backend.WithPublishContext(ctx, pc), v.ID))
	fromAPI := must[*backend.Volume](t)(e.node(t, 1).Volume(ctx, v.ID))
	for what, got := range map[string]*backend.Volume{"publish context": fromPC, "API": fromAPI} {
		if got.Root == nil || *got.Root != *s.Root {
			t.Errorf("node read root %+v from the %s, want %+v", got.Root, what, s.Root)
		}
	}
	if err := e.be.Unpublish(ctx, v.ID, sid(e.servers[0])); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{v.ID, plain.ID} {
		if err := e.be.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	e.checkClean(t)
}

func TestRootDirLabelChangedOutside(t *testing.T) {
	hv := &hcloud.Volume{ID: 7, Size: 10, Labels: map[string]string{
		LabelCluster: "test", LabelName: "x", labelFs: "ext4", labelAccessMode: "SINGLE_NODE_WRITER", labelRoot + "mode": "99999"}}
	_, err := toVolume(hv)
	wantCode(t, err, codes.FailedPrecondition)
}
