package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/volcap"
)

// FenceExpiry is how long a fenced client stays blocklisted. Once it
// expires, a client still running could write again: a day leaves time to
// end the lost node's processes (or the node) for good.
const FenceExpiry = 24 * time.Hour

// metaFenced is the image metadata key that holds, while a fence is under
// way, the clients it fences (a JSON list of addresses), so that a retry
// after a crash fences them again even once Ceph no longer shows them.
const metaFenced = "swarm-csi.fenced"

// fences reports whether a new attachment of v (as just read) must first
// fence the clients of its image: the volume is confined to one node, and
// no node has it. Its image is then open on no
// client that the driver knows of: Swarm publishes to a node before the
// node stages the volume, and a node lets go of the image (its last
// NodeUnpublishVolume waits for the attach process to end) before Swarm
// unpublishes the volume from it. Only a node that was lost while it had
// the volume (docker node rm, then swarm-csi volume release) leaves a
// client behind, and that client may still write. A retry of a publish
// that has recorded its attachment, and every later publish to that node,
// fences nothing: the node's own client is never fenced.
func fences(v *backend.Volume) bool {
	return volcap.SingleNode(volcap.ParseMode(v.AccessMode)) && len(v.Attachments) == 0
}

// fence blocklists every client that has ref open or holds its exclusive
// lock, and breaks that lock, so that the node the volume is being
// published to becomes its only writer. Without this, a lost node's client
// keeps writing: librbd hands the exclusive lock over to whoever asks, one
// write at a time. Blocklisted, the client's operations fail (EIO through
// its device) and its watch goes at once.
//
// The clients are blocklisted for FenceExpiry, then the locks broken:
// librbd blocklists the owner again as it breaks the lock, for the
// monitors' default of an hour (on Pacific a longer
// rbd_blocklist_expire_seconds makes the break fail with EINVAL), so the
// owners are blocklisted for FenceExpiry once more after. With the lock
// broken, the new node's client takes it without breaking (and
// blocklisting) anything.
//
// A client on the controller's own host is not fenced: it may be this
// process (another call's open of the image), and no node's client is left
// there in the normal course. The publish is refused then, for Swarm to
// try again.
//
// The clients are noted in the image's metadata first and forgotten once
// the attachment is recorded (forget), so that a retry after a crash at
// any point fences them all again, for FenceExpiry.
func (b *Backend) fence(ctx context.Context, cr creds, ref imageRef, v *backend.Volume, nodeID string) (fenced bool, err error) {
	var noted []string
	s, err := b.cl.MetaGet(ctx, cr, ref, metaFenced)
	switch {
	case errors.Is(err, KindNotFound):
	case err != nil:
		return false, err
	default:
		_ = json.Unmarshal([]byte(s), &noted) // unreadable: Ceph shows the clients still open
	}
	watchers, err := b.cl.Watchers(ctx, cr, ref)
	if err != nil {
		return false, err
	}
	owners, err := b.cl.LockOwners(ctx, cr, ref)
	if err != nil {
		return false, err
	}
	clients := slices.Compact(slices.Sorted(slices.Values(slices.Concat(noted, watchers, owners))))
	if len(clients) == 0 {
		return false, nil
	}
	local := slices.DeleteFunc(slices.Clone(clients), func(c string) bool { return !b.localClient(c) })
	if len(local) > 0 {
		return false, csierr.Precondition("volume %s (%s) is published to no node, but its image %s is still open on %s, on the controller's own host: "+
			"it is not fenced; the publish succeeds once that client has closed the image", v.ID, v.AccessMode, ref, strings.Join(local, ", "))
	}
	if len(clients) > len(noted) {
		list, _ := json.Marshal(clients)
		if err := b.cl.MetaSet(ctx, cr, ref, metaFenced, string(list)); err != nil {
			return false, err
		}
	}
	for _, c := range clients {
		if err := b.cl.Blocklist(ctx, cr, c, FenceExpiry); err != nil {
			return false, err
		}
	}
	for _, o := range owners {
		// Blocklisted, the owner can no longer release the lock itself.
		if err := b.cl.BreakLock(ctx, cr, ref, o); err != nil && !errors.Is(err, KindNotFound) {
			return false, err
		}
		if err := b.cl.Blocklist(ctx, cr, o, FenceExpiry); err != nil {
			return false, err
		}
	}
	b.cfg.Log.Warn("fenced the clients a lost node left on a single-node volume before publishing it to another node: "+
		"blocklisted, they can no longer write to it",
		"volume", v.ID, "image", ref.String(), "node", nodeID, "clients", clients, "lockOwners", owners, "expiry", FenceExpiry)
	return true, nil
}

// forget drops the note of a fence once the attachment it was for is
// recorded. The clients stay blocklisted; a note left by a crash only
// makes the next fence blocklist them again.
func (b *Backend) forget(ctx context.Context, cr creds, ref imageRef) error {
	err := b.cl.MetaRemove(ctx, cr, ref, metaFenced)
	if errors.Is(err, KindNotFound) {
		return nil
	}
	return err
}

// localClient reports whether a client, named by its address as Ceph
// gives it ("10.0.0.5:0/3771829850", "v2:10.0.0.5:0/377..."), runs on
// this host: its IP is one of this host's. An address that does not parse
// is not local.
func (b *Backend) localClient(addr string) bool {
	addr = strings.TrimPrefix(strings.TrimPrefix(addr, "v1:"), "v2:")
	if i := strings.LastIndexByte(addr, '/'); i >= 0 {
		addr = addr[:i]
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && b.localIP(ip)
}

// hostHasIP reports whether ip is an address of this host (of its network
// namespace: the plugin runs in the host's).
func hostHasIP(ip net.IP) bool {
	if ip.IsLoopback() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return true // unknown: never fence what may be this process
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}
