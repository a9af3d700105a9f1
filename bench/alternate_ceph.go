//go:build ceph && cgo

package main

import (
	"context"
	"fmt"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"

	"github.com/swarm-csi/swarm-csi/pkg/backend/rbd/cephtest"
)

// fillIndex writes recs, by key, straight into the index of the rbd
// backend with this prefix, which must exist: as image metadata, in the
// omap of the index image's header (what rbd image-meta set does), a
// thousand keys a write.
func fillIndex(ctx context.Context, cl *cephtest.Cluster, prefix string, recs map[string]string) error {
	conn, err := rados.NewConnWithUser(cl.User)
	if err != nil {
		return err
	}
	if err := conn.ReadConfigFile(cl.Conf); err != nil {
		return err
	}
	if err := conn.SetConfigOption("keyring", cl.Keyring); err != nil {
		return err
	}
	if err := conn.Connect(); err != nil {
		return err
	}
	defer conn.Shutdown()
	io, err := conn.OpenIOContext(cl.Pool)
	if err != nil {
		return err
	}
	defer io.Destroy()
	img, err := rbd.OpenImageReadOnly(io, prefix+"-index", rbd.NoSnapshot)
	if err != nil {
		return fmt.Errorf("the index of %s: %w", prefix, err)
	}
	id, err := img.GetId()
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	pairs := map[string][]byte{}
	write := func() error {
		op := rados.CreateWriteOp()
		defer op.Release()
		op.AssertExists()
		op.SetOmap(pairs)
		pairs = map[string][]byte{}
		return op.Operate(io, "rbd_header."+id, rados.OperationNoFlag)
	}
	for k, v := range recs {
		if err := ctx.Err(); err != nil {
			return err
		}
		pairs["metadata_"+k] = []byte(v)
		if len(pairs) == 1000 {
			if err := write(); err != nil {
				return err
			}
		}
	}
	return write()
}
