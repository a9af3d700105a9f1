package ops

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/docker/go-units"
)

// snapshots lists the snapshots, of one source volume if sourceID is set.
func (o *op) snapshots(ctx context.Context, sourceID string) ([]*csi.Snapshot, error) {
	var out []*csi.Snapshot
	token := ""
	for {
		r, err := o.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: sourceID, StartingToken: token})
		if err != nil {
			return nil, err
		}
		for _, e := range r.GetEntries() {
			out = append(out, e.GetSnapshot())
		}
		if token = r.GetNextToken(); token == "" {
			return out, nil
		}
	}
}

// snapshotNamed finds a snapshot by the name it was created with, or its
// id (swarm-csi's ListSnapshots takes either), or returns nil.
func (o *op) snapshotNamed(ctx context.Context, name string) (*csi.Snapshot, error) {
	r, err := o.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: name})
	if err != nil {
		return nil, err
	}
	if len(r.GetEntries()) == 0 {
		return nil, nil
	}
	return r.GetEntries()[0].GetSnapshot(), nil
}

func (o *op) snapshotCreate(ctx context.Context, volName, snapName string) error {
	_, id, err := o.swarmVolume(ctx, volName)
	if err != nil {
		return err
	}
	// CreateSnapshot of a name that exists answers with that snapshot
	// (or AlreadyExists for another source): refuse it here, plainly.
	if s, err := o.snapshotNamed(ctx, snapName); err != nil {
		return err
	} else if s != nil {
		return fmt.Errorf("snapshot %s exists already (%s of volume id %s, %s): choose another name", snapName,
			s.GetSnapshotId(), s.GetSourceVolumeId(), s.GetCreationTime().AsTime().Format(time.RFC3339))
	}
	start := time.Now()
	r, err := o.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: snapName, SourceVolumeId: id})
	if err != nil {
		return fmt.Errorf("snapshot %s of %s: %w", snapName, volName, err)
	}
	fmt.Fprintf(o.out, "snapshot %s of %s: %s, %d bytes, in %s\n", snapName, volName, r.GetSnapshot().GetSnapshotId(),
		r.GetSnapshot().GetSizeBytes(), time.Since(start).Round(time.Millisecond))
	return nil
}

func (o *op) snapshotLs(ctx context.Context, args []string) error {
	src := ""
	if len(args) == 1 {
		_, id, err := o.swarmVolume(ctx, args[0])
		if err != nil {
			return err
		}
		src = id
	}
	snaps, err := o.snapshots(ctx, src)
	if err != nil {
		return err
	}
	type row struct {
		SnapshotID string    `json:"snapshot_id"`
		Source     string    `json:"source_volume_id"`
		SizeBytes  int64     `json:"size_bytes"`
		Created    time.Time `json:"created"`
		Ready      bool      `json:"ready"`
	}
	var rows []row
	for _, s := range snaps {
		rows = append(rows, row{s.GetSnapshotId(), s.GetSourceVolumeId(), s.GetSizeBytes(), s.GetCreationTime().AsTime(), s.GetReadyToUse()})
	}
	return o.print(rows, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "SNAPSHOT ID\tSOURCE VOLUME ID\tSIZE\tCREATED\tREADY")
		for _, r := range rows {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%t\n", r.SnapshotID, r.Source, units.BytesSize(float64(r.SizeBytes)), r.Created.Format(time.RFC3339), r.Ready)
		}
	})
}

func (o *op) snapshotRm(ctx context.Context, name string) error {
	s, err := o.snapshotNamed(ctx, name)
	if err != nil {
		return err
	}
	if s == nil {
		return fmt.Errorf("no snapshot %s (swarm-csi snapshot ls lists them)", name)
	}
	if _, err := o.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.GetSnapshotId()}); err != nil {
		return fmt.Errorf("snapshot %s: %w", name, err)
	}
	fmt.Fprintf(o.out, "deleted %s (%s)\n", name, s.GetSnapshotId())
	return nil
}
