package hcloud

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/internal/testenv"
	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/hcloud/fakecloud"
)

// faults are what the cloud does wrong before a call: its answers fail
// (before or after taking effect), it is rate limited, or its actions are
// slow or fail.
var faults = []struct {
	name   string
	inject func(c *fakecloud.Cloud)
}{
	{"none", func(*fakecloud.Cloud) {}},
	{"429 spell", func(c *fakecloud.Cloud) {
		// As Hetzner answers: a spent budget, no Retry-After to wait for.
		c.Inject(fakecloud.Fault{Status: http.StatusTooManyRequests, Times: 3})
	}},
	{"500", func(c *fakecloud.Cloud) { c.Inject(fakecloud.Fault{Status: http.StatusInternalServerError}) }},
	{"503 on a change, after it took effect", func(c *fakecloud.Cloud) {
		for _, m := range []string{"POST", "DELETE", "PUT"} {
			c.Inject(fakecloud.Fault{Method: m, Status: http.StatusServiceUnavailable, After: true})
		}
	}},
	{"502 on a change, after it took effect", func(c *fakecloud.Cloud) {
		c.Inject(fakecloud.Fault{Method: "POST", Status: http.StatusBadGateway, After: true})
	}},
	{"503 on reads", func(c *fakecloud.Cloud) {
		c.Inject(fakecloud.Fault{Method: "GET", Status: http.StatusServiceUnavailable, Times: 2})
	}},
	{"slow actions", func(c *fakecloud.Cloud) { c.SetActionDelay("", 400*time.Millisecond) }},
	{"failing action", func(c *fakecloud.Cloud) {
		for _, cmd := range []string{"create_volume", "attach_volume", "detach_volume", "resize_volume"} {
			c.FailActions(cmd, "action_failed", "injected", 1)
		}
	}},
}

// TestRetriesConverge drives volumes through their lifecycle while the
// cloud misbehaves before every call, retrying each call until it
// succeeds, as Swarm does. Every call must converge; no volume may exist
// twice at any time; at the end nothing is left: no volume, loop device,
// by-id link or image.
func TestRetriesConverge(t *testing.T) {
	t.Run("without devices", func(t *testing.T) { testRetriesConverge(t, false) })
	t.Run("loop devices", func(t *testing.T) {
		testenv.RequireRoot(t)
		testRetriesConverge(t, true)
	})
}

func testRetriesConverge(t *testing.T, devices bool) {
	e := newEnv(t, devices, withWait(250*time.Millisecond))
	rng := rand.New(rand.NewPCG(7, 11))
	ctx := context.Background()
	n1, n2 := e.node(t, 0), e.node(t, 1)
	used := map[string]int{}

	// retry calls op until it succeeds, with a fault drawn before each try.
	retry := func(what string, op func() error) {
		t.Helper()
		for attempt := 1; ; attempt++ {
			f := faults[rng.IntN(len(faults))]
			used[f.name]++
			f.inject(e.cloud)
			err := op()
			e.cloud.ClearFaults()
			e.cloud.SetActionDelay("", 5*time.Millisecond)
			e.checkNoDuplicates(t)
			if err == nil {
				return
			}
			if attempt == 40 {
				t.Fatalf("%s: no success after %d attempts: %v", what, attempt, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	for i := range 3 {
		s := spec(fmt.Sprintf("converge-%d", i))
		if i%2 == 1 {
			s.Block, s.FsType = true, ""
		}
		var v *backend.Volume
		retry("create", func() (err error) { v, err = e.be.CreateVolume(ctx, s); return err })
		for _, hop := range []struct {
			node   *NodeSide
			server string
		}{{n1, sid(e.servers[0])}, {n2, sid(e.servers[1])}} {
			retry("publish", func() error {
				_, err := e.be.Publish(ctx, v, backend.Attachment{NodeID: hop.server})
				return err
			})
			if devices {
				hop.node.writeAndCheck(t, ctx, e, v.ID, i)
			}
			retry("expand", func() error { _, err := e.be.ExpandVolume(ctx, v.ID, v.CapacityBytes+backend.GiB); return err })
			v.CapacityBytes += backend.GiB
			retry("unpublish", func() error { return e.be.Unpublish(ctx, v.ID, hop.server) })
		}
		retry("delete", func() error { return e.be.DeleteVolume(ctx, v.ID) })
	}
	t.Logf("faults drawn: %v", used)
	e.checkClean(t)
}

// checkNoDuplicates fails if two volumes exist for one CSI name.
func (e *env) checkNoDuplicates(t *testing.T) {
	t.Helper()
	seen := map[string]int64{}
	for _, v := range e.cloud.Volumes() {
		h := v.Labels[LabelName]
		if other, dup := seen[h]; dup {
			t.Fatalf("volumes %d and %d exist for one name", other, v.ID)
		}
		seen[h] = v.ID
	}
}

// writeAndCheck reads what the previous server wrote at the start of the
// volume's device and writes its own mark: data follows the volume from
// server to server.
func (n *NodeSide) writeAndCheck(t *testing.T, ctx context.Context, e *env, id string, i int) {
	t.Helper()
	v, err := n.Volume(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := n.Attach(ctx, v, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64)
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	mark := []byte(fmt.Sprintf("volume %d on server %d", i, n.serverID))
	if n.serverID == e.servers[1].ID {
		prev := fmt.Sprintf("volume %d on server %d", i, e.servers[0].ID)
		if !bytes.HasPrefix(buf, []byte(prev)) {
			t.Fatalf("server %d reads %q, want what server %d wrote", n.serverID, bytes.TrimRight(buf, "\x00"), e.servers[0].ID)
		}
	}
	if _, err := f.WriteAt(mark, 0); err != nil {
		t.Fatal(err)
	}
	if err := n.Detach(ctx, id); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		t.Fatalf("%s is no block device: %v", dev, err)
	}
}
