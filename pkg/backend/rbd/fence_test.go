package rbd

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// Clients of the tests: node 1's mapping (it wrote: it holds the lock),
// another client node 1 left open (idle), node 2's mapping. The
// controller's host is 10.0.0.1.
const (
	client1     = "10.0.0.11:0/3771829850"
	client1Idle = "10.0.0.11:0/1930323886"
	client2     = "10.0.0.12:0/2521663363"
)

// fenceEnv is a backend on a fake cluster whose controller runs on
// 10.0.0.1, with its Warn log, and a volume.
type fenceEnv struct {
	t   *testing.T
	f   *fakeCeph
	b   *Backend
	log *bytes.Buffer
	v   *backend.Volume
	ref imageRef
}

func newFenceEnv(t *testing.T, mode string) *fenceEnv {
	t.Helper()
	e := &fenceEnv{t: t, f: newFakeCeph(), log: &bytes.Buffer{}}
	e.b = newTestBackend(t, e.f)
	e.b.cfg.Log = slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e.b.localIP = func(ip net.IP) bool { return ip.IsLoopback() || ip.Equal(net.IPv4(10, 0, 0, 1)) }
	v, err := e.b.CreateVolume(context.Background(), backend.VolumeSpec{Name: "db", CapacityBytes: 64 * backend.MiB, FsType: "ext4", AccessMode: mode})
	if err != nil {
		t.Fatal(err)
	}
	e.v = v
	e.ref, _, _ = e.b.names.parseVolumeID(v.ID)
	return e
}

// publish is ControllerPublishVolume's call: the volume as just read.
func (e *fenceEnv) publish(node string) error {
	v, err := e.b.Volume(context.Background(), e.v.ID)
	if err != nil {
		return err
	}
	_, err = e.b.Publish(context.Background(), v, backend.Attachment{NodeID: node})
	return err
}

func (e *fenceEnv) mustPublish(node string) {
	e.t.Helper()
	if err := e.publish(node); err != nil {
		e.t.Fatalf("publish to %s: %v", node, err)
	}
}

func (e *fenceEnv) unpublish(node string) {
	e.t.Helper()
	if err := e.b.Unpublish(context.Background(), e.v.ID, node); err != nil {
		e.t.Fatal(err)
	}
}

func (e *fenceEnv) open(addr string, owner bool) {
	e.t.Helper()
	if err := e.f.openBy(e.ref, addr, owner); err != nil {
		e.t.Fatal(err)
	}
}

// attachedTo returns the nodes the record has the volume attached to.
func (e *fenceEnv) attachedTo() []string {
	e.t.Helper()
	v, err := e.b.Volume(context.Background(), e.v.ID)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, a := range v.Attachments {
		out = append(out, a.NodeID)
	}
	return out
}

// image returns the image's watchers and lock owner.
func (e *fenceEnv) image() ([]string, string) {
	e.f.mu.Lock()
	defer e.f.mu.Unlock()
	i := e.f.images[e.ref.String()]
	return slices.Clone(i.watchers), i.lockOwner
}

// note is the image's note of a fence under way.
func (e *fenceEnv) note() string {
	e.f.mu.Lock()
	defer e.f.mu.Unlock()
	return e.f.images[e.ref.String()].meta[metaFenced]
}

func (e *fenceEnv) blocklisted() map[string]bool {
	e.f.mu.Lock()
	defer e.f.mu.Unlock()
	out := map[string]bool{}
	for a, d := range e.f.blocklisted {
		if d != FenceExpiry {
			e.t.Errorf("%s blocklisted for %s, want %s", a, d, FenceExpiry)
		}
		out[a] = true
	}
	return out
}

// Node 1 has the volume mapped and is lost: Swarm unpublishes it (docker
// node rm) while its clients still run. The publish to node 2 blocklists
// both clients for FenceExpiry, breaks the lock, says so at Warn, and
// records node 2.
func TestFenceAfterNodeLoss(t *testing.T) {
	for _, mode := range []string{"SINGLE_NODE_WRITER", "SINGLE_NODE_SINGLE_WRITER", "SINGLE_NODE_MULTI_WRITER", "SINGLE_NODE_READER_ONLY"} {
		t.Run(mode, func(t *testing.T) {
			e := newFenceEnv(t, mode)
			e.mustPublish("n1")
			e.open(client1, true)
			e.open(client1Idle, false)
			e.unpublish("n1")
			e.mustPublish("n2")

			if got := e.blocklisted(); len(got) != 2 || !got[client1] || !got[client1Idle] {
				t.Errorf("blocklisted %v, want %s and %s", got, client1, client1Idle)
			}
			if w, owner := e.image(); len(w) != 0 || owner != "" {
				t.Errorf("after the fence the image has watchers %v and lock owner %q", w, owner)
			}
			if got := e.attachedTo(); !slices.Equal(got, []string{"n2"}) {
				t.Errorf("attached to %v, want [n2]", got)
			}
			if n := e.note(); n != "" {
				t.Errorf("the fence's note is left: %s", n)
			}
			log := e.log.String()
			if !strings.Contains(log, "level=WARN") || !strings.Contains(log, "fenced") || !strings.Contains(log, client1) ||
				!strings.Contains(log, client1Idle) || !strings.Contains(log, "node=n2") {
				t.Errorf("the Warn log does not say what was fenced:\n%s", log)
			}
			// Fenced, node 1's client cannot come back.
			if err := e.f.openBy(e.ref, client1, true); err == nil {
				t.Error("a fenced client opened the image again")
			}
			// Node 2 maps the image and takes the lock.
			e.open(client2, true)
		})
	}
}

// Volumes several nodes may have at once are never fenced, whatever is
// open: other nodes' clients are legitimate.
func TestNoFenceForMultiNodeModes(t *testing.T) {
	for _, mode := range []string{"MULTI_NODE_READER_ONLY", "MULTI_NODE_SINGLE_WRITER", "MULTI_NODE_MULTI_WRITER"} {
		t.Run(mode, func(t *testing.T) {
			e := newFenceEnv(t, mode)
			e.mustPublish("n1")
			e.open(client1, true)
			e.unpublish("n1")
			e.mustPublish("n2")
			if got := e.blocklisted(); len(got) != 0 {
				t.Errorf("blocklisted %v", got)
			}
			if w, owner := e.image(); !slices.Equal(w, []string{client1}) || owner != client1 {
				t.Errorf("the image has watchers %v and lock owner %q; want %s's, untouched", w, owner, client1)
			}
			for _, op := range e.f.opsDone() {
				if op == "status" || op == "lock ls" || op == "blocklist" || op == "lock break" {
					t.Errorf("the publish asked Ceph %q", op)
				}
			}
		})
	}
}

// The node a volume is published to never fences its own client: a retry
// of the publish, after it recorded the attachment and the node mapped the
// image, finds the attachment and asks Ceph nothing. Neither does a volume
// moving normally (the old node let go before its unpublish), nor a
// publish to a second node while the first has the volume (the controller
// refuses that one; the backend leaves it alone too).
func TestNoSelfFence(t *testing.T) {
	e := newFenceEnv(t, "SINGLE_NODE_WRITER")
	e.mustPublish("n1")
	e.open(client1, true)
	before := len(e.f.opsDone())
	e.mustPublish("n1")
	e.mustPublish("n1")
	if ops := e.f.opsDone()[before:]; slices.ContainsFunc(ops, func(op string) bool { return op != "image-meta get" }) {
		t.Errorf("a retried publish to the node that has the volume asked Ceph %v", ops)
	}
	if err := e.publish("n2"); err != nil {
		t.Fatalf("publish to n2 while n1 has the volume (refused by the controller before it gets here): %v", err)
	}
	if got := e.blocklisted(); len(got) != 0 {
		t.Errorf("blocklisted %v", got)
	}
	// A normal move: node 1's last NodeUnpublishVolume ends its client
	// before Swarm unpublishes it.
	e.unpublish("n2")
	e.f.closeBy(e.ref, client1)
	e.unpublish("n1")
	e.mustPublish("n2")
	if got := e.blocklisted(); len(got) != 0 {
		t.Errorf("a normal move blocklisted %v", got)
	}
	if e.log.Len() > 0 {
		t.Errorf("a normal move logged:\n%s", e.log)
	}
	e.unpublish("n2")
	before = len(e.f.opsDone())
	e.mustPublish("n1")
	if ops := e.f.opsDone()[before:]; slices.ContainsFunc(ops, func(op string) bool {
		return op == "blocklist" || op == "lock break" || op == "image-meta remove"
	}) || e.note() != "" {
		t.Errorf("a publish with nothing to fence asked Ceph %v, noted %q", ops, e.note())
	}
}

// A client on the controller's own host (maybe this very process, another
// call having the image open) is not fenced: the publish is refused with
// FailedPrecondition, and goes through once the client has closed.
func TestNoFenceOfTheControllersHost(t *testing.T) {
	for _, own := range []string{"10.0.0.1:0/42", "127.0.0.1:0/42"} {
		e := newFenceEnv(t, "SINGLE_NODE_WRITER")
		e.open(client1, true)
		e.open(own, false)
		err := e.publish("n2")
		if csierr.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), own) {
			t.Fatalf("publish with %s open: %v, want FailedPrecondition naming it", own, err)
		}
		if got := e.blocklisted(); len(got) != 0 {
			t.Errorf("blocklisted %v", got)
		}
		if got := e.attachedTo(); len(got) != 0 {
			t.Errorf("attached to %v after a refused publish", got)
		}
		e.f.closeBy(e.ref, own)
		e.mustPublish("n2")
		if got := e.blocklisted(); len(got) != 1 || !got[client1] {
			t.Errorf("blocklisted %v, want %s only", got, client1)
		}
	}
}

// A crash at any call of the publish that fences (before, between and
// after the blocklisting, the lock's break and the record's write), then
// Swarm's retry: the end is the same as without the crash.
func TestFenceRetryAfterCrashConverges(t *testing.T) {
	setup := func() *fenceEnv {
		e := newFenceEnv(t, "SINGLE_NODE_WRITER")
		e.mustPublish("n1")
		e.open(client1, true)
		e.open(client1Idle, false)
		e.unpublish("n1")
		return e
	}
	clean := setup()
	start := clean.f.calls
	clean.mustPublish("n2")
	calls := clean.f.calls - start
	if calls < 11 {
		t.Fatalf("the fencing publish made %d calls to Ceph; want the record's read, the note's read, status, lock owners, the note, "+
			"two blocklists, the break, the owner's blocklist, the record's write, the note's removal", calls)
	}
	for n := 1; n <= calls; n++ {
		e := setup()
		e.f.failAt = e.f.calls + n
		if err := e.publish("n2"); err == nil {
			t.Fatalf("crash at call %d went unnoticed", n)
		}
		e.mustPublish("n2") // the retry
		if got := e.blocklisted(); len(got) != 2 || !got[client1] || !got[client1Idle] {
			t.Errorf("crash at call %d, then retry: blocklisted %v", n, got)
		}
		if w, owner := e.image(); len(w) != 0 || owner != "" {
			t.Errorf("crash at call %d, then retry: watchers %v, lock owner %q", n, w, owner)
		}
		if got := e.attachedTo(); !slices.Equal(got, []string{"n2"}) {
			t.Errorf("crash at call %d, then retry: attached to %v", n, got)
		}
		// Node 2 maps the image; a further retry leaves it alone.
		e.open(client2, true)
		e.mustPublish("n2")
		if e.blocklisted()[client2] {
			t.Errorf("crash at call %d: a later retry fenced node 2's own client", n)
		}
	}
}

func TestLocalClient(t *testing.T) {
	b := &Backend{localIP: func(ip net.IP) bool { return ip.Equal(net.IPv4(10, 0, 0, 1)) || ip.Equal(net.IPv6loopback) }}
	for addr, want := range map[string]bool{
		"10.0.0.1:0/3771829850":    true,
		"v2:10.0.0.1:0/3771829850": true,
		"10.0.0.1:6800/12":         true,
		"[::1]:0/5":                true,
		"10.0.0.11:0/3771829850":   false,
		"v1:10.0.0.11:0/1":         false,
		"[fe80::1]:0/5":            false,
		"garbage":                  false,
		"":                         false,
	} {
		if got := b.localClient(addr); got != want {
			t.Errorf("localClient(%q) = %t, want %t", addr, got, want)
		}
	}
	if !hostHasIP(net.IPv4(127, 0, 0, 1)) || hostHasIP(net.IPv4(192, 0, 2, 254)) {
		t.Error("hostHasIP: 127.0.0.1 is this host's, 192.0.2.254 (TEST-NET-1) is not")
	}
}
