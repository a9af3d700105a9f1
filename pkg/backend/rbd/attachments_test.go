package rbd

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/controller"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// attEnv is a backend on a fake cluster with volumes v0..v(n-1).
type attEnv struct {
	t    *testing.T
	f    *fakeCeph
	b    *Backend
	vols []*backend.Volume
}

func newAttEnv(t *testing.T, n int) *attEnv {
	t.Helper()
	e := &attEnv{t: t, f: newFakeCeph()}
	e.b = newTestBackend(t, e.f)
	for i := range n {
		v, err := e.b.CreateVolume(context.Background(), backend.VolumeSpec{Name: fmt.Sprint("v", i), CapacityBytes: 64 * backend.MiB,
			FsType: "ext4", AccessMode: "SINGLE_NODE_WRITER"})
		if err != nil {
			t.Fatal(err)
		}
		e.vols = append(e.vols, v)
	}
	return e
}

// publish is ControllerPublishVolume's call: the volume as just read.
func (e *attEnv) publish(i int, node string) error {
	v, err := e.b.Volume(context.Background(), e.vols[i].ID)
	if err != nil {
		return err
	}
	_, err = e.b.Publish(context.Background(), v, backend.Attachment{NodeID: node})
	return err
}

func (e *attEnv) count(node string) int64 {
	e.t.Helper()
	n, err := e.b.NodeAttachments(context.Background(), node)
	if err != nil {
		e.t.Fatalf("NodeAttachments(%s): %v", node, err)
	}
	return n
}

// recorded counts the volume records that list an attachment to node.
func (e *attEnv) recorded(node string) int64 {
	e.t.Helper()
	vols, err := e.b.ListVolumes(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	n := int64(0)
	for _, v := range vols {
		if _, ok := v.AttachedTo(node); ok {
			n++
		}
	}
	return n
}

// keys returns the index's attachment keys.
func (e *attEnv) keys() []string {
	e.f.mu.Lock()
	defer e.f.mu.Unlock()
	var out []string
	for k := range e.f.images["rbd/"+e.b.names.index()].meta {
		if strings.HasPrefix(k, attachmentKeyPrefix) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

func (e *attEnv) key(i int, node string) string {
	_, hash, _ := e.b.names.parseVolumeID(e.vols[i].ID)
	return attachmentKey(node, hash)
}

// A node's count reads the node's keys and the records they name: two
// reads of the index however many volumes it holds, and the node ids
// that extend another's ("n1.x" beside "n1") keep apart.
func TestNodeAttachmentsReadsTheNodesKeys(t *testing.T) {
	e := newAttEnv(t, 40)
	for i, node := range []string{"n1", "n10", "n1.x", "n2", "n1.x"} {
		if err := e.publish(i, node); err != nil {
			t.Fatal(err)
		}
	}
	for node, want := range map[string]int64{"n1": 1, "n10": 1, "n1.x": 2, "n2": 1, "n3": 0, "bad/id": 0} {
		if got := e.count(node); got != want {
			t.Errorf("NodeAttachments(%s) = %d, want %d", node, got, want)
		}
	}
	before := len(e.f.opsDone())
	e.count("n1.x")
	if ops := e.f.opsDone()[before:]; !slices.Equal(ops, []string{"image-meta list", "image-meta get"}) {
		t.Errorf("a count asked Ceph %v; want one listing of the node's keys and one read of their records", ops)
	}
	if err := e.b.Unpublish(context.Background(), e.vols[4].ID, "n1.x"); err != nil {
		t.Fatal(err)
	}
	if got := e.count("n1.x"); got != 1 {
		t.Errorf("after an unpublish: %d", got)
	}
	if got, want := e.keys(), []string{e.key(0, "n1"), e.key(1, "n10"), e.key(2, "n1.x"), e.key(3, "n2")}; !slices.Equal(got, sorted(want)) {
		t.Errorf("keys %v, want %v", got, sorted(want))
	}
	if _, err := e.b.Publish(context.Background(), e.vols[5], backend.Attachment{NodeID: "bad/id"}); csierr.Code(err) != codes.InvalidArgument {
		t.Errorf("publish to a node id that cannot be a key: %v", err)
	}
}

func sorted(s []string) []string { return slices.Sorted(slices.Values(s)) }

// A crash at any call of a publish or an unpublish leaves a count that
// agrees with the records, drops the key the crash left without its
// record, and the retry ends with a key for every attachment and no other.
func TestAttachmentKeysAfterCrashConverge(t *testing.T) {
	ctx := context.Background()
	steps := []struct {
		name string
		run  func(e *attEnv) error
		want int64 // attached to n1 after the step
	}{
		{"publish", func(e *attEnv) error { return e.publish(0, "n1") }, 2},
		{"unpublish", func(e *attEnv) error { return e.b.Unpublish(ctx, e.vols[1].ID, "n1") }, 0},
	}
	for _, st := range steps {
		setup := func() *attEnv {
			e := newAttEnv(t, 2)
			if err := e.publish(1, "n1"); err != nil {
				t.Fatal(err)
			}
			if st.name == "unpublish" {
				e.want(1)
			}
			e.count("n1") // the index is built: the counts below make no more calls
			return e
		}
		clean := setup()
		start := clean.f.calls
		if err := st.run(clean); err != nil {
			t.Fatal(err)
		}
		calls := clean.f.calls - start
		for n := 1; n <= calls; n++ {
			e := setup()
			e.f.failAt = e.f.calls + n
			if err := st.run(e); err == nil {
				t.Fatalf("%s: crash at call %d went unnoticed", st.name, n)
			}
			if got, rec := e.count("n1"), e.recorded("n1"); got != rec {
				t.Errorf("%s: crash at call %d: count %d, the records list %d", st.name, n, got, rec)
			}
			if err := st.run(e); err != nil {
				t.Fatalf("%s: crash at call %d, retry: %v", st.name, n, err)
			}
			if got := e.count("n1"); got != st.want {
				t.Errorf("%s: crash at call %d, then retry: count %d, want %d", st.name, n, got, st.want)
			}
			var want []string
			for i := range e.vols {
				if v, _ := e.b.Volume(ctx, e.vols[i].ID); v != nil {
					if _, ok := v.AttachedTo("n1"); ok {
						want = append(want, e.key(i, "n1"))
					}
				}
			}
			if got := e.keys(); !slices.Equal(got, sorted(want)) {
				t.Errorf("%s: crash at call %d, then retry: keys %v, want %v", st.name, n, got, sorted(want))
			}
		}
	}
}

// A key left by a publish that crashed before its record, of a volume then
// deleted, or of a name's earlier volume, is not counted, and goes.
func TestStrayAttachmentKeysGo(t *testing.T) {
	ctx := context.Background()
	e := newAttEnv(t, 3)
	if err := e.publish(0, "n1"); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{1, 2} {
		// The key's write goes through, the record's after it fails.
		e.f.errs = map[string][]error{"image-meta set": {nil, &Error{Kind: KindTimeout, Msg: "(110) Connection timed out"}}}
		if err := e.publish(i, "n1"); err == nil {
			t.Fatal("the crash went unnoticed")
		}
	}
	if err := e.b.DeleteVolume(ctx, e.vols[2].ID); err != nil {
		t.Fatal(err)
	}
	if got := e.keys(); len(got) != 3 {
		t.Fatalf("keys %v; want the published one and the two the crashes left", got)
	}
	if got := e.count("n1"); got != 1 {
		t.Errorf("count %d, want 1", got)
	}
	if got, want := e.keys(), []string{e.key(0, "n1")}; !slices.Equal(got, want) {
		t.Errorf("keys %v, want %v", got, want)
	}
}

// An index written before the attachment keys (records with attachments,
// no keys) gets them at the first count, once: the counts are right from
// the start, and a restarted driver finds them built.
func TestAttachmentKeysBuiltForAnOldIndex(t *testing.T) {
	ctx := context.Background()
	e := newAttEnv(t, 5)
	for i, node := range []string{"n1", "n1", "n2", "", "n1"} {
		if node != "" {
			if err := e.publish(i, node); err != nil {
				t.Fatal(err)
			}
		}
	}
	// What the release before the keys left: the same records, no keys.
	e.f.mu.Lock()
	meta := e.f.images["rbd/"+e.b.names.index()].meta
	for k := range meta {
		if strings.HasPrefix(k, attachmentKeyPrefix) || k == attIndexedKey {
			delete(meta, k)
		}
	}
	e.f.mu.Unlock()
	// A volume published meanwhile by this release has its key already.
	if err := e.publish(3, "n2"); err != nil {
		t.Fatal(err)
	}
	b := newTestBackend(t, e.f) // the upgraded driver
	e.b = b
	if got := e.count("n1"); got != 3 {
		t.Errorf("n1: %d, want 3", got)
	}
	if got := e.count("n2"); got != 2 {
		t.Errorf("n2: %d, want 2", got)
	}
	want := sorted([]string{e.key(0, "n1"), e.key(1, "n1"), e.key(4, "n1"), e.key(2, "n2"), e.key(3, "n2")})
	if got := e.keys(); !slices.Equal(got, want) {
		t.Errorf("keys %v, want %v", got, want)
	}
	// Built once: a later count, and another driver's, only count.
	for _, b := range []*Backend{b, newTestBackend(t, e.f)} {
		e.b = b
		before := len(e.f.opsDone())
		e.count("n1")
		if ops := e.f.opsDone()[before:]; slices.Contains(ops, "image-meta set") || len(ops) > 3 {
			t.Errorf("a count after the build asked Ceph %v", ops)
		}
	}
	if err := e.b.Unpublish(ctx, e.vols[0].ID, "n1"); err != nil {
		t.Fatal(err)
	}
	if got := e.count("n1"); got != 2 {
		t.Errorf("n1 after an unpublish: %d, want 2", got)
	}

	// A build that fails is done again whole.
	fresh := newAttEnv(t, 1)
	if err := fresh.publish(0, "n1"); err != nil {
		t.Fatal(err)
	}
	fresh.f.mu.Lock()
	delete(fresh.f.images["rbd/"+fresh.b.names.index()].meta, fresh.key(0, "n1"))
	fresh.f.mu.Unlock()
	fresh.b = newTestBackend(t, fresh.f)
	fresh.f.errs = map[string][]error{"image-meta set": {&Error{Kind: KindTimeout, Msg: "(110) Connection timed out"}}}
	if _, err := fresh.b.NodeAttachments(ctx, "n1"); err == nil {
		t.Fatal("a failed build went unnoticed")
	}
	if got := fresh.count("n1"); got != 1 {
		t.Errorf("after a failed build and another: %d, want 1", got)
	}
}

// The controller's per-node limit holds over the rbd backend when many
// publishes to one node run at once: the node's lock keeps each count
// from running while another publish is between its key and its record.
func TestNodeLimitUnderConcurrentPublishes(t *testing.T) {
	const limit, tries = 3, 12
	e := newAttEnv(t, tries)
	ctx := context.Background()
	if err := e.b.index.set(ctx, e.b.creds, nodeKeyPrefix+"n1", nodeRecord{RegisteredAt: time.Now(), AttachMode: ModeFuse}); err != nil {
		t.Fatal(err)
	}
	s := controller.New(e.b, limit)
	e.f.delay = time.Millisecond // every call takes a while: the publishes overlap
	errs := make([]error, tries)
	var wg sync.WaitGroup
	for i, v := range e.vols {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: v.ID, NodeId: "n1",
				VolumeCapability: &csi.VolumeCapability{
					AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
					AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}})
		}()
	}
	wg.Wait()
	published := 0
	for i, err := range errs {
		switch csierr.Code(err) {
		case codes.OK:
			published++
		case codes.ResourceExhausted:
		default:
			t.Errorf("publish of v%d: %v, want success or ResourceExhausted", i, err)
		}
	}
	if rec := e.recorded("n1"); published != limit || rec != limit || e.count("n1") != limit {
		t.Fatalf("%d publishes succeeded, the records list %d attachments to a node that takes %d", published, rec, limit)
	}
}

// want checks the count against n.
func (e *attEnv) want(n int64) {
	e.t.Helper()
	if got := e.count("n1"); got != n {
		e.t.Fatalf("count %d, want %d", got, n)
	}
}
