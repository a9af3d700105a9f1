package rbd

import (
	"context"
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
// end the lost node's processes (or the node) for good. librbd's own
// blocklisting, when it breaks an exclusive lock, uses it too
// (rbd_blocklist_expire_seconds in cephConf): Ceph's default is an hour,
// and a later, shorter entry would replace a longer one.
const FenceExpiry = 24 * time.Hour

// fences reports whether publishing v as a to a record whose attachments
// are those of v must first fence the image's clients: the volume is
// confined to one node, and no node has it. Its image is then open on no
// client that the driver knows of: Swarm publishes to a node before the
// node stages the volume, and a node lets go of the image (its last
// NodeUnpublishVolume waits for the attach process to end) before Swarm
// unpublishes the volume from it. Only a node that Swarm gave up on
// (docker node rm) leaves a client behind, and that client may still
// write. A retry of a publish that has recorded its attachment, and every
// later publish to that node, fences nothing: the node's own client is
// never fenced.
func fences(v *backend.Volume) bool {
	return volcap.SingleNode(volcap.ParseMode(v.AccessMode)) && len(v.Attachments) == 0
}

// fence blocklists every client that has ref open or holds its exclusive
// lock, then breaks that lock, so that the node the volume is being
// published to becomes its only writer. Without this, a lost node's
// client keeps writing: librbd hands the exclusive lock over to whoever
// asks, one write at a time. Blocklisted, the client's operations fail
// (EIO through its device), its watch goes at once, and the new node's
// client takes the lock.
//
// A client on the controller's own host is not fenced: it may be this
// process (another call's open of the image), and no node's client is left
// there in the normal course. The publish is refused then, for Swarm to
// try again.
//
// Every step may be repeated: after a crash at any point the retry finds
// the clients still open or the lock still held, and fences them again.
func (b *Backend) fence(ctx context.Context, cr creds, ref imageRef, v *backend.Volume, nodeID string) error {
	watchers, err := b.cl.Watchers(ctx, cr, ref)
	if err != nil {
		return err
	}
	owners, err := b.cl.LockOwners(ctx, cr, ref)
	if err != nil {
		return err
	}
	clients := slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(watchers), owners...))))
	if len(clients) == 0 {
		return nil
	}
	local := slices.DeleteFunc(slices.Clone(clients), func(c string) bool { return !b.localClient(c) })
	if len(local) > 0 {
		return csierr.Precondition("volume %s (%s) is published to no node, but its image %s is still open on %s, on the controller's own host: "+
			"it is not fenced; the publish succeeds once that client has closed the image", v.ID, v.AccessMode, ref, strings.Join(local, ", "))
	}
	for _, c := range clients {
		if err := b.cl.Blocklist(ctx, cr, c, FenceExpiry); err != nil {
			return err
		}
	}
	for _, o := range owners {
		// Blocklisted, the owner can no longer release the lock itself.
		if err := b.cl.BreakLock(ctx, cr, ref, o); err != nil && !errors.Is(err, KindNotFound) {
			return err
		}
	}
	b.cfg.Log.Warn("fenced the clients a lost node left on a single-node volume before publishing it to another node: "+
		"blocklisted, they can no longer write to it",
		"volume", v.ID, "image", ref.String(), "node", nodeID, "clients", clients, "lockOwners", owners, "expiry", FenceExpiry)
	return nil
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
