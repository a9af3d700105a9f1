package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

const nodeID = "bench-node"

// buildDriver builds cmd/swarm-csi into dir (works from anywhere in the
// module); for the rbd backend, the Ceph build.
func buildDriver(ctx context.Context, dir, backend string) (string, error) {
	bin := filepath.Join(dir, "swarm-csi")
	args := []string{"build", "-o", bin}
	if backend == "rbd" {
		args = append(args, "-tags", "ceph,pacific")
	}
	cmd := exec.CommandContext(ctx, "go", append(args, "github.com/swarm-csi/swarm-csi/cmd/swarm-csi")...)
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building driver (or pass --driver): %w\n%s", err, out)
	}
	return bin, nil
}

// driver is a running swarm-csi process and a gRPC client for it.
type driver struct {
	cmd    *exec.Cmd
	out    *tailBuffer
	exited chan struct{} // closed when the process is gone; wait is then set
	wait   error
	conn   *grpc.ClientConn
	id     csi.IdentityClient
	ctrl   csi.ControllerClient
	node   csi.NodeClient
	// nodeID is what the driver's NodeGetInfo says, which publishing
	// names: --node-id, or the server id of the hcloud backend.
	nodeID string
}

// startDriver runs the driver with its data in dir, and the backend's
// arguments and environment.
func startDriver(ctx context.Context, bin, dir string, args, env []string) (*driver, error) {
	sock := filepath.Join(dir, "csi.sock")
	if len(sock) > 100 {
		return nil, fmt.Errorf("socket path %s too long for a unix socket; use a shorter --dir", sock)
	}
	d := &driver{out: &tailBuffer{max: 4 << 10}, exited: make(chan struct{})}
	d.cmd = exec.Command(bin,
		"--endpoint", "unix://"+sock,
		"--data-dir", filepath.Join(dir, "data"),
		"--node-id", nodeID,
		"--log-level", "warn")
	d.cmd.Args = append(d.cmd.Args, args...)
	d.cmd.Env = append(os.Environ(), env...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	// Own process group: Ctrl-C reaches only us, and we tear down through
	// the driver before stopping it. Pdeathsig: no orphan if we are killed.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		d.wait = d.cmd.Wait()
		close(d.exited)
	}()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, errors.Join(err, d.stop())
	}
	d.conn = conn
	d.id, d.ctrl, d.node = csi.NewIdentityClient(conn), csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	if err := d.waitReady(ctx, sock); err != nil {
		return nil, errors.Join(d.annotate(err), d.stop())
	}
	info, err := d.node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil {
		return nil, errors.Join(d.annotate(err), d.stop())
	}
	d.nodeID = info.GetNodeId()
	return d, nil
}

func (d *driver) pid() int { return d.cmd.Process.Pid }

// waitReady waits until the driver answers Probe and has the capabilities
// the lifecycle needs.
func (d *driver) waitReady(ctx context.Context, sock string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-d.exited:
			return errors.New("driver exited during start-up")
		case <-ctx.Done():
			return fmt.Errorf("driver not ready: %w", ctx.Err())
		case <-tick.C:
		}
		if _, err := os.Stat(sock); err != nil {
			continue
		}
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		r, err := d.id.Probe(pctx, &csi.ProbeRequest{})
		pcancel()
		if err == nil && (r.GetReady() == nil || r.GetReady().GetValue()) {
			return d.checkCapabilities(ctx)
		}
	}
}

func (d *driver) checkCapabilities(ctx context.Context) error {
	cr, err := d.ctrl.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		return fmt.Errorf("ControllerGetCapabilities: %w", err)
	}
	var ctrl []csi.ControllerServiceCapability_RPC_Type
	for _, c := range cr.GetCapabilities() {
		ctrl = append(ctrl, c.GetRpc().GetType())
	}
	nr, err := d.node.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	if err != nil {
		return fmt.Errorf("NodeGetCapabilities: %w", err)
	}
	var node []csi.NodeServiceCapability_RPC_Type
	for _, c := range nr.GetCapabilities() {
		node = append(node, c.GetRpc().GetType())
	}
	var missing []string
	for _, c := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
	} {
		if !slices.Contains(ctrl, c) {
			missing = append(missing, c.String())
		}
	}
	if !slices.Contains(node, csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME) {
		missing = append(missing, csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME.String())
	}
	if missing != nil {
		return fmt.Errorf("driver lacks capabilities %v", missing)
	}
	return nil
}

// annotate adds to err whether the driver died and its last output.
func (d *driver) annotate(err error) error {
	if err == nil {
		return nil
	}
	select {
	case <-d.exited:
		err = fmt.Errorf("%w\ndriver exited: %v", err, d.wait)
	default:
	}
	if out := d.out.String(); out != "" {
		err = fmt.Errorf("%w\ndriver output (tail):\n%s", err, out)
	}
	return err
}

// stop terminates the driver: SIGTERM, then SIGKILL after 10 s.
func (d *driver) stop() error {
	if d.conn != nil {
		d.conn.Close()
	}
	select {
	case <-d.exited:
		return nil
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		return nil
	case <-time.After(10 * time.Second):
	}
	_ = d.cmd.Process.Kill()
	<-d.exited
	return errors.New("driver ignored SIGTERM for 10s; killed")
}

// driverLifecycle is one volume through the CSI RPCs, as a CO would drive
// them: CreateVolume, ControllerPublishVolume, NodeStageVolume,
// NodePublishVolume, and back.
func (b *bench) driverLifecycle(name, fs string, size int64) *lifecycle {
	return b.driverVolume(name, fs, size, nil)
}

// driverTarget is where driverLifecycle publishes the volume name.
func (b *bench) driverTarget(name string) string { return filepath.Join(b.dir, "mnt", name, "target") }

// driverVolume is driverLifecycle for a volume created with the given
// mutable parameters.
func (b *bench) driverVolume(name, fs string, size int64, mutable map[string]string) *lifecycle {
	d := b.drv
	staging := filepath.Join(b.dir, "mnt", name, "staging") // created by the CO
	target := b.driverTarget(name)                          // created by the SP
	capability := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	var (
		vol    *csi.Volume
		pubCtx map[string]string
	)
	l := &lifecycle{
		name: "driver volume " + name,
		dirs: []string{staging},
		setup: []step{{
			name: "CreateVolume",
			do: func(ctx context.Context) error {
				r, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
					Name:               name,
					CapacityRange:      &csi.CapacityRange{RequiredBytes: size},
					VolumeCapabilities: []*csi.VolumeCapability{capability},
					Parameters:         map[string]string{"fsType": fs},
					MutableParameters:  mutable,
				})
				vol = r.GetVolume()
				return err
			},
			undo: &step{name: "DeleteVolume", do: func(ctx context.Context) error {
				_, err := d.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()})
				return err
			}},
		}, {
			name: "ControllerPublishVolume",
			do: func(ctx context.Context) error {
				r, err := d.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{
					VolumeId:         vol.GetVolumeId(),
					NodeId:           d.nodeID,
					VolumeCapability: capability,
					VolumeContext:    vol.GetVolumeContext(),
				})
				pubCtx = r.GetPublishContext()
				return err
			},
			undo: &step{name: "ControllerUnpublishVolume", do: func(ctx context.Context) error {
				_, err := d.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{
					VolumeId: vol.GetVolumeId(),
					NodeId:   d.nodeID,
				})
				return err
			}},
		}, {
			name: "NodeStageVolume",
			do: func(ctx context.Context) error {
				_, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
					VolumeId:          vol.GetVolumeId(),
					PublishContext:    pubCtx,
					StagingTargetPath: staging,
					VolumeCapability:  capability,
					VolumeContext:     vol.GetVolumeContext(),
				})
				return err
			},
			undo: &step{name: "NodeUnstageVolume", do: func(ctx context.Context) error {
				_, err := d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{
					VolumeId:          vol.GetVolumeId(),
					StagingTargetPath: staging,
				})
				return err
			}},
		}, {
			name: "NodePublishVolume",
			do: func(ctx context.Context) error {
				_, err := d.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
					VolumeId:          vol.GetVolumeId(),
					PublishContext:    pubCtx,
					StagingTargetPath: staging,
					TargetPath:        target,
					VolumeCapability:  capability,
					VolumeContext:     vol.GetVolumeContext(),
				})
				return err
			},
			undo: &step{name: "NodeUnpublishVolume", do: func(ctx context.Context) error {
				_, err := d.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{
					VolumeId:   vol.GetVolumeId(),
					TargetPath: target,
				})
				return err
			}},
		}},
	}
	if b.cfg.Backend == "hcloud" {
		for i := range l.setup {
			l.setup[i].do = b.retryAborted(l.setup[i].do)
			if u := l.setup[i].undo; u != nil {
				u.do = b.retryAborted(u.do)
			}
		}
	}
	return l
}

// retryAborted makes a call again while it answers Aborted, as a CO does
// (Swarm backs off from 100 ms, doubling): the driver answers Aborted when
// a cloud action outlasts its wait, and the next call waits for it.
func (b *bench) retryAborted(do func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		backoff := 100 * time.Millisecond
		for {
			err := do(ctx)
			if status.Code(err) != codes.Aborted {
				return err
			}
			b.retried.Add(1)
			select {
			case <-ctx.Done():
				return err
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
