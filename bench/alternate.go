package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/backend/loop"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd"
	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
	"github.com/swarm-csi/swarm-csi/pkg/controller"
)

// With --store N --alternate the bench compares, in this process, two
// controllers of the same backend: one on an empty store and one on a
// store of N volumes. Rounds alternate between them (which goes first
// too), each round one volume's controller calls, so the machine's load
// hits both alike, then as many rounds of a ListVolumes page; the figure is each call's p50 with N volumes over its
// p50 on the empty store, whose target is at most altTarget.

const (
	altTarget = 1.2
	// altMaxPerNode is the driver's default --max-volumes-per-node: with
	// it, every publish counts the node's volumes.
	altMaxPerNode = 128
	// altAttachEvery: every altAttachEvery-th filler volume is attached
	// to another node, altPerOtherNode at most to each, so the per-node
	// counts have others' attachments to leave out.
	altAttachEvery  = 50
	altPerOtherNode = 100
	// altPage is the ListVolumes page size.
	altPage = 100
)

// altCalls are the calls of a round, in order.
var altCalls = []string{"CreateVolume", "ControllerPublishVolume", "ControllerUnpublishVolume", "ControllerExpandVolume",
	"CreateSnapshot", "DeleteSnapshot", "DeleteVolume", "ListVolumes (100)"}

// AlternateReport is what --alternate measures.
type AlternateReport struct {
	Volumes int `json:"volumes"`
	// Attached of the Volumes are attached to OtherNodes other nodes.
	Attached   int `json:"attached"`
	OtherNodes int `json:"other_nodes"`
	// Fill says how the Volumes were made: "driver" (CreateVolume and
	// ControllerPublishVolume, FillParallel at a time) or "index" (their
	// records written straight into the rbd index).
	Fill         string    `json:"fill"`
	FillParallel int       `json:"fill_parallel,omitempty"`
	FillSeconds  float64   `json:"fill_s"`
	Rounds       int       `json:"rounds"`
	Calls        []AltCall `json:"calls"`
}

// AltCall is one call's figures on both stores.
type AltCall struct {
	Call  string `json:"call"`
	Empty Stat   `json:"empty"`
	Full  Stat   `json:"full"`
	// Ratio is Full.P50ms / Empty.P50ms.
	Ratio float64 `json:"ratio_p50"`
	// Entries are what a ListVolumes page held on each store, which a
	// ratio compares too.
	Entries [2]int `json:"entries,omitempty"`
}

// altStore is one side of the comparison: a controller on its store.
type altStore struct {
	name     string
	ctrl     *controller.Server
	register func(ctx context.Context, nodeID string) error
	times    [][]time.Duration // by altCalls
	entries  int               // of the last ListVolumes page
}

// newAltStore makes the controller of one side, its data under dir (and,
// for rbd, its records in an index of its own, named by prefix).
func newAltStore(cfg config, ceph *cephtest.Cluster, dir, prefix string) (*altStore, error) {
	s := &altStore{name: prefix, times: make([][]time.Duration, len(altCalls))}
	var be backend.Controller
	switch cfg.Backend {
	case "loop":
		b, err := loop.New(filepath.Join(dir, prefix))
		if err != nil {
			return nil, err
		}
		be, s.register = b, b.Register
	case "rbd":
		b, err := rbd.New(rbd.Config{Monitors: ceph.MonHost, Pool: ceph.Pool, User: ceph.User, Keyring: ceph.Keyring,
			Prefix: prefix, StateDir: filepath.Join(dir, prefix)})
		if err != nil {
			return nil, err
		}
		be = b
		s.register = func(ctx context.Context, nodeID string) error {
			n, err := b.ForNode(nodeID, rbd.ModeFuse)
			if err != nil {
				return err
			}
			return n.Register(ctx, nodeID)
		}
	default:
		return nil, fmt.Errorf("--alternate: for loop or rbd")
	}
	s.ctrl = controller.New(be, altMaxPerNode)
	return s, nil
}

// alternate runs the --alternate comparison in dir.
func alternate(ctx context.Context, cfg config, dir string, log io.Writer) (rep *AlternateReport, err error) {
	var ceph *cephtest.Cluster
	if cfg.Backend == "rbd" {
		fmt.Fprintln(log, "starting a throwaway Ceph cluster ...")
		if ceph, _, _, err = startCeph(ctx); err != nil {
			return nil, err
		}
		defer func() { err = errors.Join(err, ceph.Stop()) }()
	}
	empty, err := newAltStore(cfg, ceph, dir, "empty")
	if err != nil {
		return nil, err
	}
	full, err := newAltStore(cfg, ceph, dir, "full")
	if err != nil {
		return nil, err
	}
	n := *cfg.Store
	rep = &AlternateReport{Volumes: n, Attached: (n + altAttachEvery - 1) / altAttachEvery, Fill: cfg.Fill, Rounds: cfg.AltRounds}
	rep.OtherNodes = (rep.Attached + altPerOtherNode - 1) / altPerOtherNode
	for _, s := range []*altStore{empty, full} {
		for _, node := range append([]string{nodeID}, otherNodes(rep.OtherNodes)...) {
			if err := s.register(ctx, node); err != nil {
				return nil, fmt.Errorf("registering %s: %w", node, err)
			}
		}
	}
	fmt.Fprintf(log, "alternate: filling a store with %d volumes (%s) ...\n", n, cfg.Fill)
	start := time.Now()
	if cfg.Fill == "index" {
		err = fillIndex(ctx, ceph, full.name, indexRecords(ceph.Pool, full.name, n, cfg.FS))
	} else {
		rep.FillParallel = cfg.FillParallel
		err = full.fill(ctx, n, cfg.FillParallel, cfg.FS, log)
	}
	if err != nil {
		return nil, fmt.Errorf("filling the store: %w", err)
	}
	rep.FillSeconds = time.Since(start).Seconds()
	// The rounds are measured once the filling is on disk, not while the
	// kernel writes it back.
	syscall.Sync()

	fmt.Fprintf(log, "alternate: %d rounds ...\n", cfg.AltRounds)
	for _, s := range []*altStore{empty, full} { // warm-up, not counted
		if err := s.round(ctx, "warmup", cfg.FS, false); err != nil {
			return nil, fmt.Errorf("%s store, warm-up: %w", s.name, err)
		}
	}
	for r := range cfg.AltRounds {
		for k := range 2 {
			s := []*altStore{empty, full}[(k+r)%2]
			if err := s.round(ctx, fmt.Sprintf("alt-%05d", r), cfg.FS, true); err != nil {
				return nil, fmt.Errorf("%s store, round %d: %w", s.name, r, err)
			}
		}
	}
	// The pages in rounds of their own: reading a listing of N names
	// leaves the calls right after it slower (DeleteVolume of loop, 0.4
	// ms, took twice as long right after a page that read 20,000 names),
	// which is the listing's cost, not theirs.
	for r := range cfg.AltRounds {
		for k := range 2 {
			s := []*altStore{empty, full}[(k+r)%2]
			if err := s.listPage(ctx); err != nil {
				return nil, fmt.Errorf("%s store, page %d: %w", s.name, r, err)
			}
		}
	}
	for i, call := range altCalls {
		c := AltCall{Call: call, Empty: stat(call, empty.times[i]), Full: stat(call, full.times[i])}
		if c.Empty.P50ms > 0 {
			c.Ratio = c.Full.P50ms / c.Empty.P50ms
		}
		if call == "ListVolumes (100)" {
			c.Entries = [2]int{empty.entries, full.entries}
		}
		rep.Calls = append(rep.Calls, c)
	}
	return rep, nil
}

// otherNodes are the ids of n other nodes.
func otherNodes(n int) []string {
	ids := make([]string, n)
	for k := range ids {
		ids[k] = fmt.Sprintf("other-node-%d", k)
	}
	return ids
}

// otherNode is the node the i-th filler volume is attached to, if it is.
func otherNode(i int) string { return fmt.Sprintf("other-node-%d", i/altAttachEvery/altPerOtherNode) }

// volumeRequest is the CreateVolume of a volume of fillerSize.
func volumeRequest(name, fs string) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: fillerSize},
		VolumeCapabilities: []*csi.VolumeCapability{mountCapability(fs)},
	}
}

func mountCapability(fs string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// fill creates n volumes through the controller, parallel at a time, and
// publishes every altAttachEvery-th to one of the other nodes.
func (s *altStore) fill(ctx context.Context, n, parallel int, fs string, log io.Writer) error {
	var next, done atomic.Int64
	errs := make([]error, parallel)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < n && ctx.Err() == nil; i = int(next.Add(1) - 1) {
				if err := s.fillOne(ctx, i, fs); err != nil {
					errs[w] = fmt.Errorf("volume %d: %w", i, err)
					cancel()
					return
				}
				if d := done.Add(1); d%int64(max(n/10, 1)) == 0 {
					fmt.Fprintf(log, "  %d volumes in %.1fs\n", d, time.Since(start).Seconds())
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return ctx.Err()
}

func (s *altStore) fillOne(ctx context.Context, i int, fs string) error {
	r, err := s.ctrl.CreateVolume(ctx, volumeRequest(fmt.Sprintf("store-%06d", i), fs))
	if err != nil || i%altAttachEvery != 0 {
		return err
	}
	_, err = s.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{
		VolumeId: r.GetVolume().GetVolumeId(), NodeId: otherNode(i),
		VolumeCapability: mountCapability(fs)})
	return err
}

// indexRecords returns the records of n volumes as the rbd backend keeps
// them in its index (prefix's, in pool), every altAttachEvery-th
// attached to one of the other nodes: by key, JSON. Their images do not
// exist; no call of a round reads them.
func indexRecords(pool, prefix string, n int, fs string) map[string]string {
	recs := make(map[string]string, n)
	created := time.Now().UTC()
	for i := range n {
		name := fmt.Sprintf("store-%06d", i)
		sum := sha256.Sum256([]byte(name))
		hash := hex.EncodeToString(sum[:16])
		image := prefix + "-vol-" + hash
		v := backend.Volume{ID: pool + "/" + image, CreatedAt: created, VolumeSpec: backend.VolumeSpec{
			Name: name, CapacityBytes: fillerSize, FsType: fs, AccessMode: "SINGLE_NODE_WRITER"}}
		if i%altAttachEvery == 0 {
			v.Attachments = []backend.Attachment{{NodeID: otherNode(i)}}
		}
		b, _ := json.Marshal(struct {
			backend.Volume
			Pool  string `json:"pool"`
			Image string `json:"image"`
		}{v, pool, image})
		recs["vol."+hash] = string(b)
	}
	return recs
}

// round makes one volume go through the calls of a round (altCalls but
// the page), timed if keep.
func (s *altStore) round(ctx context.Context, name, fs string, keep bool) error {
	c := s.ctrl
	var vol *csi.Volume
	var snap *csi.Snapshot
	calls := []func() error{
		func() error {
			r, err := c.CreateVolume(ctx, volumeRequest(name, fs))
			vol = r.GetVolume()
			return err
		},
		func() error {
			_, err := c.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{
				VolumeId: vol.GetVolumeId(), NodeId: nodeID, VolumeCapability: mountCapability(fs)})
			return err
		},
		func() error {
			_, err := c.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), NodeId: nodeID})
			return err
		},
		func() error {
			_, err := c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
				VolumeId: vol.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * fillerSize}})
			return err
		},
		func() error {
			r, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name + "-snap", SourceVolumeId: vol.GetVolumeId()})
			snap = r.GetSnapshot()
			return err
		},
		func() error {
			_, err := c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()})
			return err
		},
		func() error {
			_, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()})
			return err
		},
	}
	return s.timed(calls, 0, keep)
}

// listPage times a ListVolumes page (the last of altCalls).
func (s *altStore) listPage(ctx context.Context) error {
	return s.timed([]func() error{func() error {
		r, err := s.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: altPage})
		s.entries = len(r.GetEntries())
		return err
	}}, len(altCalls)-1, true)
}

// timed makes calls, altCalls[first:] in order, and times them if keep.
func (s *altStore) timed(calls []func() error, first int, keep bool) error {
	for i, call := range calls {
		start := time.Now()
		if err := call(); err != nil {
			return fmt.Errorf("%s: %w", altCalls[first+i], err)
		}
		if keep {
			s.times[first+i] = append(s.times[first+i], time.Since(start))
		}
	}
	return nil
}

func (r *AlternateReport) print(w io.Writer) {
	if r == nil {
		return
	}
	how := fmt.Sprintf("created through the driver's controller, %d at a time", max(r.FillParallel, 1))
	if r.Fill == "index" {
		how = "their records written straight into the rbd index (no images)"
	}
	fmt.Fprintf(w, "\nalternate: %d rounds in one process, an empty store against one of %d volumes (%d of them attached to %d other node(s)), %s in %.1fs\n",
		r.Rounds, r.Volumes, r.Attached, r.OtherNodes, how, r.FillSeconds)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  call\t  empty p50 / p95 ms\t  %d p50 / p95 ms\t  ratio p50\t\n", r.Volumes)
	for _, c := range r.Calls {
		verdict := "within target"
		switch {
		case c.Entries != [2]int{}:
			verdict = fmt.Sprintf("pages of %d and %d entries", c.Entries[0], c.Entries[1])
		case c.Ratio > altTarget:
			verdict = "NOT within target"
		}
		fmt.Fprintf(tw, "  %s\t%8.2f / %6.2f\t%8.2f / %6.2f\t%8.2f\t  %s\n", c.Call, c.Empty.P50ms, c.Empty.P95ms, c.Full.P50ms, c.Full.P95ms, c.Ratio, verdict)
	}
	tw.Flush()
	fmt.Fprintf(w, "  ListVolumes: a page of %d, in %d rounds of their own after the others\n", altPage, r.Rounds)
	fmt.Fprintf(w, "  target: a ratio (%d / empty) of at most %.1f for every per-volume call\n", r.Volumes, altTarget)
}
