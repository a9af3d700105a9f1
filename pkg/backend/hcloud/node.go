package hcloud

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
	"github.com/hetznercloud/hcloud-go/v2/hcloud/metadata"
	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// DefaultDeviceDir is where a server's volumes appear, by id.
const DefaultDeviceDir = "/dev/disk/by-id"

// NodeSide is the hcloud backend as the node service uses it, on one
// server. The controller attaches and detaches; the node finds the device.
type NodeSide struct {
	*Backend
	serverID  int64
	deviceDir string

	mu   sync.Mutex
	seen map[string]*backend.Volume // volumes attached here, as last told
}

var _ backend.Node = (*NodeSide)(nil)

// ForNode returns the node side of b on the server serverID, whose
// volumes appear in deviceDir (DefaultDeviceDir on a real server).
func (b *Backend) ForNode(serverID int64, deviceDir string) (*NodeSide, error) {
	if serverID <= 0 {
		return nil, fmt.Errorf("server id %d: want a positive number", serverID)
	}
	if !filepath.IsAbs(deviceDir) || filepath.Clean(deviceDir) != deviceDir {
		return nil, fmt.Errorf("device directory %q: want a clean absolute path", deviceDir)
	}
	return &NodeSide{Backend: b, serverID: serverID, deviceDir: deviceDir, seen: map[string]*backend.Volume{}}, nil
}

// Register implements backend.Node: the node id must be this server's id.
func (n *NodeSide) Register(_ context.Context, nodeID string) error {
	if nodeID != strconv.FormatInt(n.serverID, 10) {
		return csierr.Invalid("node id %q: the hcloud backend's node id is the server id, %d", nodeID, n.serverID)
	}
	return nil
}

// Volume implements backend.Node. Staging and publishing carry the
// publish context, which holds what the node needs (see publishContext).
// Without it (Swarm lost it, SwarmKit #3276), and for the other calls
// (the growth check every --grow-interval, stats, health), a volume
// whose device is on this server is as last told: what the node uses of
// it (filesystem, access mode, mkfsOptions) does not change, and its size
// shows in the device at once. Otherwise the volume is read from the API.
func (n *NodeSide) Volume(ctx context.Context, id string) (*backend.Volume, error) {
	if v := n.fromPublishContext(id, backend.PublishContext(ctx)); v != nil {
		n.keep(v)
		return v, nil
	}
	if v := n.kept(id); v != nil {
		return v, nil
	}
	v, err := n.Backend.Volume(ctx, id)
	if err == nil {
		n.keep(v)
	}
	return v, err
}

// keep remembers a volume attached to this server.
func (n *NodeSide) keep(v *backend.Volume) {
	if _, ok := v.AttachedTo(strconv.FormatInt(n.serverID, 10)); !ok {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.seen[v.ID] = v
}

// kept returns a copy of the volume as last told while its device is on
// this server, or nil.
func (n *NodeSide) kept(id string) *backend.Volume {
	n.mu.Lock()
	v := n.seen[id]
	n.mu.Unlock()
	if v == nil {
		return nil
	}
	if vid, _ := parseID(id); vid > 0 {
		if dev, err := n.device(vid); dev != "" && err == nil {
			c := *v
			c.Attachments = slices.Clone(v.Attachments)
			return &c
		}
	}
	n.mu.Lock()
	delete(n.seen, id)
	n.mu.Unlock()
	return nil
}

// fromPublishContext returns the volume a publish context describes, as
// published to this server, or nil if it describes no volume of this
// cluster with that id.
func (n *NodeSide) fromPublishContext(id string, pc map[string]string) *backend.Volume {
	vid, ok := parseID(id)
	if !ok || pc[pcVolume] != id {
		return nil
	}
	size, err := strconv.Atoi(pc[pcSizeGiB])
	if err != nil || size <= 0 {
		return nil
	}
	hv := &hcloud.Volume{ID: vid, Size: size, Labels: map[string]string{}, Server: &hcloud.Server{ID: n.serverID}}
	for k, v := range pc {
		if strings.HasPrefix(k, labelPrefix) {
			hv.Labels[k] = v
		}
	}
	if !n.ours(hv) {
		return nil
	}
	v, err := toVolume(hv)
	if err != nil {
		return nil
	}
	return v
}

// link is the by-id path of a volume's device.
func (n *NodeSide) link(id int64) string {
	return filepath.Join(n.deviceDir, DevicePrefix+strconv.FormatInt(id, 10))
}

// Attach implements backend.Node. The controller has attached the volume;
// its device appears in the by-id directory, possibly a moment later
// (udev), so Attach waits for it within the budget. No publish context
// is needed: the device follows from the volume id (SwarmKit #3276).
func (n *NodeSide) Attach(ctx context.Context, v *backend.Volume, _ map[string]string) (string, error) {
	vid, ok := parseID(v.ID)
	if !ok {
		return "", csierr.NotFound("volume %q is not a Hetzner Cloud volume id", v.ID)
	}
	if dev, err := n.device(vid); dev != "" || err != nil {
		return dev, err
	}
	server := strconv.FormatInt(n.serverID, 10)
	if _, ok := v.AttachedTo(server); !ok {
		return "", csierr.Precondition("volume %d is not attached to this server (%s): ControllerPublishVolume attaches it", vid, server)
	}
	wctx, cancel := context.WithTimeout(ctx, n.cfg.Wait)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-wctx.Done():
			if err := ctx.Err(); err != nil {
				return "", err
			}
			return "", fmt.Errorf("%w: volume %d is attached to this server, but %s did not appear within %s",
				csierr.ErrUnavailable, vid, n.link(vid), n.cfg.Wait)
		case <-tick.C:
		}
		if dev, err := n.device(vid); dev != "" || err != nil {
			return dev, err
		}
	}
}

// device resolves a volume's by-id link to its block device, or "" when
// there is no link.
func (n *NodeSide) device(id int64) (string, error) {
	link := n.link(id)
	dev, err := filepath.EvalSymlinks(link)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", link, err)
	}
	fi, err := os.Stat(dev)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", link, err)
	}
	if fi.Mode()&fs.ModeDevice == 0 || fi.Mode()&fs.ModeCharDevice != 0 {
		return "", fmt.Errorf("%w: %s leads to %s, which is not a block device", csierr.ErrFailedPrecondition, link, dev)
	}
	return dev, nil
}

// Detach implements backend.Node. The controller detaches the volume from
// the server; the node only flushes what the device still buffers, so
// that the detach loses nothing.
func (n *NodeSide) Detach(_ context.Context, volumeID string) error {
	vid, ok := parseID(volumeID)
	if !ok {
		return nil
	}
	dev, err := n.device(vid)
	if err != nil || dev == "" {
		return err
	}
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("flush %s: %w", dev, err)
	}
	return nil
}

// Device implements backend.Node.
func (n *NodeSide) Device(_ context.Context, volumeID string) (string, error) {
	vid, ok := parseID(volumeID)
	if !ok {
		return "", nil
	}
	return n.device(vid)
}

// Health implements backend.Node: the by-id directory must be readable.
func (n *NodeSide) Health(context.Context) error {
	if _, err := os.ReadDir(n.deviceDir); err != nil {
		return fmt.Errorf("device directory: %w", err)
	}
	return nil
}

// ServerInfo is what a server's metadata service tells about it.
type ServerInfo struct {
	ID       int64
	Location string
}

// FromMetadata asks the metadata service at endpoint (metadata.Endpoint
// on a Hetzner Cloud server) for the server's id and location.
func FromMetadata(ctx context.Context, endpoint string, timeout time.Duration) (ServerInfo, error) {
	c := metadata.NewClient(metadata.WithEndpoint(endpoint), metadata.WithTimeout(timeout))
	id, err := c.InstanceIDWithContext(ctx)
	if err != nil {
		return ServerInfo{}, fmt.Errorf("metadata service %s: instance-id: %w", endpoint, err)
	}
	if id <= 0 {
		return ServerInfo{}, fmt.Errorf("metadata service %s: instance-id %d is no server id", endpoint, id)
	}
	zone, err := c.AvailabilityZoneWithContext(ctx)
	if err != nil {
		return ServerInfo{}, fmt.Errorf("metadata service %s: availability-zone: %w", endpoint, err)
	}
	// The zone is the location and the data centre: fsn1-dc14.
	location, _, _ := strings.Cut(zone, "-dc")
	return ServerInfo{ID: id, Location: location}, nil
}
