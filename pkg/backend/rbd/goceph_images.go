//go:build ceph && cgo

package rbd

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"

	"github.com/swarm-csi/swarm-csi/pkg/cephconn"
)

// withImage opens ref, read-only unless rw, runs f on it and closes it.
func (c *conn) withImage(ref imageRef, rw bool, f func(*rbd.Image) error) error {
	io, err := c.ioctx(ref.pool)
	if err != nil {
		return err
	}
	open := rbd.OpenImageReadOnly
	if rw {
		open = rbd.OpenImage
	}
	img, err := open(io, ref.image, rbd.NoSnapshot)
	if err != nil {
		return err
	}
	err = f(img)
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	return err
}

// Metadata (rbd image-meta) lives in the omap of the image's header
// object, rbd_header.<id>, each key under this prefix (cls_rbd's
// metadata_set). Read there, a key or a whole listing is one OSD read
// without opening the image, and a listing has no size limit (librbd's
// through go-ceph stops at 256 KiB). The index's records are written there
// too; other images' metadata through librbd, which tells the clients
// that have the image open.
const (
	headerPrefix = "rbd_header."
	metaPrefix   = "metadata_"
)

// onHeader runs f on ref's header object. A header that has gone (the
// index removed, perhaps made again, since its id was looked up) is looked
// up again once.
func (g *goceph) onHeader(c *conn, ref imageRef, f func(io *rados.IOContext, oid string) error) error {
	io, err := c.ioctx(ref.pool)
	if err != nil {
		return err
	}
	for retried := false; ; retried = true {
		id, err := g.imageID(c, ref)
		if err != nil {
			return err
		}
		err = f(io, headerPrefix+id)
		if retried || ref != g.index || errno(err) != syscall.ENOENT {
			return err
		}
		c.mu.Lock()
		if c.indexID == id {
			c.indexID = ""
		}
		c.mu.Unlock()
	}
}

// imageID returns ref's id: the index's as remembered, any other image's
// by opening it.
func (g *goceph) imageID(c *conn, ref imageRef) (string, error) {
	if ref == g.index {
		c.mu.Lock()
		id := c.indexID
		c.mu.Unlock()
		if id != "" {
			return id, nil
		}
	}
	var id string
	err := c.withImage(ref, false, func(img *rbd.Image) (err error) {
		id, err = img.GetId()
		return err
	})
	if err != nil {
		return "", err
	}
	if ref == g.index {
		c.mu.Lock()
		c.indexID = id
		c.mu.Unlock()
	}
	return id, nil
}

// newImageOptions are the librbd options of a new image; clones are of
// format 2.
func newImageOptions(o imageOptions, clone bool) (*rbd.ImageOptions, error) {
	opts := rbd.NewRbdImageOptions()
	err := func() error {
		if o.Features != "" {
			var bits uint64
			for _, name := range strings.Split(o.Features, ",") {
				b := uint64(rbd.FeatureSetFromNames([]string{name}))
				if b == 0 {
					return &Error{Kind: KindInvalid, Msg: "unknown image feature " + name}
				}
				bits |= b
			}
			if err := opts.SetUint64(rbd.ImageOptionFeatures, bits); err != nil {
				return err
			}
		}
		if o.DataPool != "" {
			if err := opts.SetString(rbd.ImageOptionDataPool, o.DataPool); err != nil {
				return err
			}
		}
		if clone {
			return opts.SetUint64(rbd.ImageOptionCloneFormat, 2)
		}
		return nil
	}()
	if err != nil {
		opts.Destroy()
		return nil, err
	}
	return opts, nil
}

// Create implements cluster.
func (g *goceph) Create(ctx context.Context, cr creds, ref imageRef, size int64, o imageOptions) error {
	return g.call(ctx, cr, "rbd create", ref.String(), func(c *conn) error {
		if size < 0 {
			return &Error{Kind: KindInvalid, Msg: fmt.Sprintf("size %d", size)}
		}
		opts, err := newImageOptions(o, false)
		if err != nil {
			return err
		}
		defer opts.Destroy()
		io, err := c.ioctx(ref.pool)
		if err != nil {
			return err
		}
		return rbd.CreateImage(io, ref.image, uint64(size), opts)
	})
}

// Clone implements cluster.
func (g *goceph) Clone(ctx context.Context, cr creds, parent snapRef, ref imageRef, o imageOptions) error {
	return g.call(ctx, cr, "rbd clone", parent.String()+" "+ref.String(), func(c *conn) error {
		opts, err := newImageOptions(o, true)
		if err != nil {
			return err
		}
		defer opts.Destroy()
		pio, err := c.ioctx(parent.pool)
		if err != nil {
			return err
		}
		io, err := c.ioctx(ref.pool)
		if err != nil {
			return err
		}
		return rbd.CloneImage(pio, parent.image, parent.snap, io, ref.image, opts)
	})
}

// Info implements cluster.
func (g *goceph) Info(ctx context.Context, cr creds, ref imageRef) (*imageInfo, error) {
	var info *imageInfo
	err := g.call(ctx, cr, "rbd info", ref.String(), func(c *conn) error {
		return c.withImage(ref, false, func(img *rbd.Image) (err error) {
			info, err = imageDescription(img, ref.image)
			return err
		})
	})
	return info, err
}

// imageDescription describes the open image img, named name.
func imageDescription(img *rbd.Image, name string) (*imageInfo, error) {
	size, err := img.GetSize()
	if err != nil {
		return nil, err
	}
	id, err := img.GetId()
	if err != nil {
		return nil, err
	}
	info := &imageInfo{Name: name, ID: id, Size: int64(size)}
	p, err := img.GetParent()
	switch {
	case errno(err) == syscall.ENOENT: // not a clone
	case err != nil:
		return nil, err
	default:
		info.Parent = &parentInfo{
			Pool: p.Image.PoolName, Image: p.Image.ImageName, ID: p.Image.ImageID,
			Snapshot: p.Snap.SnapName, Trash: p.Image.Trash,
		}
	}
	return info, nil
}

// Resize implements cluster.
func (g *goceph) Resize(ctx context.Context, cr creds, ref imageRef, size int64) error {
	return g.call(ctx, cr, "rbd resize", ref.String(), func(c *conn) error {
		if size < 0 {
			return &Error{Kind: KindInvalid, Msg: fmt.Sprintf("size %d", size)}
		}
		return c.withImage(ref, true, func(img *rbd.Image) error { return img.Resize(uint64(size)) })
	})
}

// Remove implements cluster.
func (g *goceph) Remove(ctx context.Context, cr creds, ref imageRef) error {
	return g.call(ctx, cr, "rbd rm", ref.String(), func(c *conn) error {
		io, err := c.ioctx(ref.pool)
		if err != nil {
			return err
		}
		err = rbd.RemoveImage(io, ref.image)
		switch errno(err) {
		case syscall.EBUSY:
			return &Error{Kind: KindBusy, Msg: "image still has watchers"}
		case syscall.ENOTEMPTY:
			return &Error{Kind: KindBusy, Msg: "image has snapshots"}
		}
		return err
	})
}

// TrashMove implements cluster.
func (g *goceph) TrashMove(ctx context.Context, cr creds, ref imageRef) error {
	return g.call(ctx, cr, "rbd trash mv", ref.String(), func(c *conn) error {
		io, err := c.ioctx(ref.pool)
		if err != nil {
			return err
		}
		return rbd.GetImage(io, ref.image).Trash(0)
	})
}

// Trash implements cluster.
func (g *goceph) Trash(ctx context.Context, cr creds, pool string) ([]trashEntry, error) {
	var out []trashEntry
	err := g.call(ctx, cr, "rbd trash ls", pool, func(c *conn) error {
		io, err := c.ioctx(pool)
		if err != nil {
			return err
		}
		list, err := rbd.GetTrashList(io)
		if err != nil {
			return err
		}
		out = make([]trashEntry, 0, len(list))
		for _, t := range list {
			out = append(out, trashEntry{ID: t.Id, Name: t.Name})
		}
		return nil
	})
	return out, err
}

// TrashInfo implements cluster.
func (g *goceph) TrashInfo(ctx context.Context, cr creds, pool, id string) (*imageInfo, error) {
	var info *imageInfo
	err := g.call(ctx, cr, "rbd trash info", pool+" image id "+id, func(c *conn) error {
		io, err := c.ioctx(pool)
		if err != nil {
			return err
		}
		list, err := rbd.GetTrashList(io)
		if err != nil {
			return err
		}
		name := ""
		for _, t := range list {
			if t.Id == id {
				name = t.Name
			}
		}
		if name == "" {
			return &Error{Kind: KindNotFound, Msg: "no image of that id in the trash"}
		}
		img, err := rbd.OpenImageByIdReadOnly(io, id, rbd.NoSnapshot)
		if err != nil {
			return err
		}
		info, err = imageDescription(img, name)
		if cerr := img.Close(); err == nil {
			err = cerr
		}
		return err
	})
	return info, err
}

// TrashRemove implements cluster.
func (g *goceph) TrashRemove(ctx context.Context, cr creds, pool, id string) error {
	return g.call(ctx, cr, "rbd trash rm", pool+" image id "+id, func(c *conn) error {
		io, err := c.ioctx(pool)
		if err != nil {
			return err
		}
		err = rbd.TrashRemove(io, id, false)
		if n := errno(err); n == syscall.EBUSY || n == syscall.ENOTEMPTY {
			return &Error{Kind: KindBusy, Msg: "clones still need the image"}
		}
		return err
	})
}

// SnapCreate implements cluster.
func (g *goceph) SnapCreate(ctx context.Context, cr creds, snap snapRef) error {
	return g.call(ctx, cr, "rbd snap create", snap.String(), func(c *conn) error {
		return c.withImage(snap.imageRef, true, func(img *rbd.Image) error {
			_, err := img.CreateSnapshot(snap.snap)
			return err
		})
	})
}

// SnapRemove implements cluster. librbd moves a snapshot that clones (v2)
// still need to the trash namespace, as rbd snap rm does.
func (g *goceph) SnapRemove(ctx context.Context, cr creds, snap snapRef) error {
	return g.call(ctx, cr, "rbd snap rm", snap.String(), func(c *conn) error {
		return c.withImage(snap.imageRef, true, func(img *rbd.Image) error {
			return img.GetSnapshot(snap.snap).Remove()
		})
	})
}

// Snapshots implements cluster.
func (g *goceph) Snapshots(ctx context.Context, cr creds, ref imageRef) ([]snapInfo, error) {
	var out []snapInfo
	err := g.call(ctx, cr, "rbd snap ls", ref.String(), func(c *conn) error {
		return c.withImage(ref, false, func(img *rbd.Image) error {
			// rbd_snap_list lists every namespace; rbd snap ls
			// filters them unless --all.
			snaps, err := img.GetSnapshotNames()
			if err != nil {
				return err
			}
			out = make([]snapInfo, 0, len(snaps))
			for _, s := range snaps {
				ns, err := img.GetSnapNamespaceType(s.Id)
				if err != nil {
					return err
				}
				out = append(out, snapInfo{Name: s.Name, Size: int64(s.Size), Namespace: namespaceName(ns)})
			}
			return nil
		})
	})
	return out, err
}

func namespaceName(ns rbd.SnapNamespaceType) string {
	switch ns {
	case rbd.SnapNamespaceTypeUser:
		return snapUser
	case rbd.SnapNamespaceTypeTrash:
		return snapTrash
	case rbd.SnapNamespaceTypeGroup:
		return "group"
	}
	return fmt.Sprintf("namespace %d", ns)
}

// MetaGet implements cluster.
func (g *goceph) MetaGet(ctx context.Context, cr creds, ref imageRef, key string) (string, error) {
	var v string
	err := g.call(ctx, cr, "rbd image-meta get", ref.String()+" "+key, func(c *conn) error {
		return g.onHeader(c, ref, func(io *rados.IOContext, oid string) error {
			op := rados.CreateReadOp()
			defer op.Release()
			op.AssertExists()
			step := op.GetOmapValuesByKeys([]string{metaPrefix + key})
			if err := op.Operate(io, oid, rados.OperationNoFlag); err != nil {
				return err
			}
			kv, err := step.Next()
			if err != nil {
				return err
			}
			if kv == nil {
				return &Error{Kind: KindNotFound, Msg: "no such key"}
			}
			v = string(kv.Value)
			return nil
		})
	})
	return v, err
}

// MetaSet implements cluster. A record goes straight into the index's
// header: librbd would open the image for writing, which takes as long as
// the rest of the call ten times over, to tell watchers the index never
// has.
func (g *goceph) MetaSet(ctx context.Context, cr creds, ref imageRef, key, value string) error {
	return g.call(ctx, cr, "rbd image-meta set", ref.String()+" "+key, func(c *conn) error {
		if ref != g.index {
			return c.withImage(ref, true, func(img *rbd.Image) error { return img.SetMetadata(key, value) })
		}
		return g.onHeader(c, ref, func(io *rados.IOContext, oid string) error {
			op := rados.CreateWriteOp()
			defer op.Release()
			op.AssertExists()
			op.SetOmap(map[string][]byte{metaPrefix + key: []byte(value)})
			return op.Operate(io, oid, rados.OperationNoFlag)
		})
	})
}

// MetaSetKeys implements cluster: one write of the index's header.
func (g *goceph) MetaSetKeys(ctx context.Context, cr creds, ref imageRef, kv map[string]string) error {
	return g.call(ctx, cr, "rbd image-meta set", fmt.Sprintf("%s (%d keys)", ref, len(kv)), func(c *conn) error {
		if ref != g.index {
			return &Error{Kind: KindInvalid, Msg: "several keys are set at once on the index only"}
		}
		return g.onHeader(c, ref, func(io *rados.IOContext, oid string) error {
			op := rados.CreateWriteOp()
			defer op.Release()
			op.AssertExists()
			pairs := make(map[string][]byte, len(kv))
			for k, v := range kv {
				pairs[metaPrefix+k] = []byte(v)
			}
			op.SetOmap(pairs)
			return op.Operate(io, oid, rados.OperationNoFlag)
		})
	})
}

// MetaGetKeys implements cluster: one read of the header's omap.
func (g *goceph) MetaGetKeys(ctx context.Context, cr creds, ref imageRef, keys []string) (map[string]string, error) {
	m := make(map[string]string, len(keys))
	if len(keys) == 0 {
		return m, nil
	}
	err := g.call(ctx, cr, "rbd image-meta get", fmt.Sprintf("%s (%d keys)", ref, len(keys)), func(c *conn) error {
		return g.onHeader(c, ref, func(io *rados.IOContext, oid string) error {
			op := rados.CreateReadOp()
			defer op.Release()
			op.AssertExists()
			want := make([]string, len(keys))
			for i, k := range keys {
				want[i] = metaPrefix + k
			}
			step := op.GetOmapValuesByKeys(want)
			if err := op.Operate(io, oid, rados.OperationNoFlag); err != nil {
				return err
			}
			for {
				kv, err := step.Next()
				if err != nil || kv == nil {
					return err
				}
				m[strings.TrimPrefix(kv.Key, metaPrefix)] = string(kv.Value)
			}
		})
	})
	return m, err
}

// MetaRemove implements cluster. A record goes straight from the index's
// header, as MetaSet writes it.
func (g *goceph) MetaRemove(ctx context.Context, cr creds, ref imageRef, key string) error {
	return g.call(ctx, cr, "rbd image-meta remove", ref.String()+" "+key, func(c *conn) error {
		if ref != g.index {
			return c.withImage(ref, true, func(img *rbd.Image) error { return img.RemoveMetadata(key) })
		}
		return g.onHeader(c, ref, func(io *rados.IOContext, oid string) error {
			op := rados.CreateWriteOp()
			defer op.Release()
			op.AssertExists()
			op.RmOmapKeys([]string{metaPrefix + key})
			return op.Operate(io, oid, rados.OperationNoFlag)
		})
	})
}

// MetaList implements cluster: the OSD starts each read at the first key
// after after with the prefix, so a page costs its own keys only.
func (g *goceph) MetaList(ctx context.Context, cr creds, ref imageRef, prefix, after string, max int) ([]metaEntry, bool, error) {
	var out []metaEntry
	more := false
	err := g.call(ctx, cr, "rbd image-meta list", ref.String()+" "+prefix, func(c *conn) error {
		out, more = nil, false
		return g.onHeader(c, ref, func(io *rados.IOContext, oid string) error {
			start := ""
			if after != "" {
				start = metaPrefix + after
			}
			for {
				n := metaChunk
				if max > 0 {
					n = min(n, max-len(out))
				}
				op := rados.CreateReadOp()
				op.AssertExists()
				step := op.GetOmapValues(start, metaPrefix+prefix, uint64(n))
				err := op.Operate(io, oid, rados.OperationNoFlag)
				for err == nil {
					var kv *rados.OmapKeyValue
					if kv, err = step.Next(); kv == nil {
						break
					}
					out = append(out, metaEntry{Key: strings.TrimPrefix(kv.Key, metaPrefix), Value: string(kv.Value)})
					start = kv.Key
				}
				more = err == nil && step.More()
				op.Release()
				if err != nil || !more || (max > 0 && len(out) >= max) {
					return err
				}
			}
		})
	})
	return out, more, err
}

// SetOption implements cluster: as rbd config image set, the option goes
// into the image's metadata as conf_<option>, where librbd checks it.
func (g *goceph) SetOption(ctx context.Context, cr creds, ref imageRef, key, value string) error {
	return g.call(ctx, cr, "rbd config image set", ref.String()+" "+key, func(c *conn) error {
		if !strings.HasPrefix(key, "rbd_") {
			return &Error{Kind: KindInvalid, Msg: "not an rbd option: " + key}
		}
		return c.withImage(ref, true, func(img *rbd.Image) error { return img.SetMetadata("conf_"+key, value) })
	})
}

// Watchers implements cluster.
func (g *goceph) Watchers(ctx context.Context, cr creds, ref imageRef) ([]string, error) {
	var out []string
	err := g.call(ctx, cr, "rbd status", ref.String(), func(c *conn) error {
		// Read-only: this open adds no watcher of its own.
		return c.withImage(ref, false, func(img *rbd.Image) error {
			ws, err := img.ListWatchers()
			if err != nil {
				return err
			}
			out = make([]string, 0, len(ws))
			for _, w := range ws {
				out = append(out, w.Addr)
			}
			return nil
		})
	})
	return out, err
}

// Blocklist implements cluster. A d of zero or less leaves Ceph's default
// (an hour).
func (g *goceph) Blocklist(ctx context.Context, cr creds, addr string, d time.Duration) error {
	return g.call(ctx, cr, "ceph osd blocklist add", addr, func(c *conn) error {
		if addr == "" || strings.ContainsAny(addr, " \n") {
			return &Error{Kind: KindInvalid, Msg: fmt.Sprintf("%q is not a client address", addr)}
		}
		cmd := map[string]any{"prefix": "osd blocklist", "blocklistop": "add", "addr": addr}
		if d > 0 {
			// A float: the monitor refuses an integer.
			cmd["expire"] = json.Number(strconv.FormatFloat(d.Seconds(), 'f', 3, 64))
		}
		_, err := c.monCommand(cmd)
		return err
	})
}

// monCommand sends a command to the monitors and returns its output. A
// failure says what the monitor said.
func (c *conn) monCommand(cmd map[string]any) ([]byte, error) {
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	out, status, err := c.rados.MonCommand(b)
	if err != nil {
		e := cephError("", err).(*Error)
		if status = strings.TrimSpace(status); status != "" {
			e.Msg = status
		}
		return nil, e
	}
	return out, nil
}

// LockOwners implements cluster.
func (g *goceph) LockOwners(ctx context.Context, cr creds, ref imageRef) ([]string, error) {
	var out []string
	err := g.call(ctx, cr, "rbd lock owners", ref.String(), func(c *conn) error {
		// A read-only open knows no exclusive lock (EINVAL).
		return c.withImage(ref, true, func(img *rbd.Image) error {
			owners, err := img.LockGetOwners()
			if err != nil {
				return err
			}
			out = make([]string, 0, len(owners))
			for _, o := range owners {
				out = append(out, o.Owner)
			}
			return nil
		})
	})
	return out, err
}

// BreakLock implements cluster. librbd also blocklists the owner
// (rbd_blocklist_on_break_lock).
func (g *goceph) BreakLock(ctx context.Context, cr creds, ref imageRef, owner string) error {
	return g.call(ctx, cr, "rbd lock break", ref.String()+" "+owner, func(c *conn) error {
		// Breaking needs an image open for writing.
		return c.withImage(ref, true, func(img *rbd.Image) error {
			return img.LockBreak(rbd.LockModeExclusive, owner)
		})
	})
}

// PoolAvailable implements cluster: max_avail of the monitors' df.
func (g *goceph) PoolAvailable(ctx context.Context, cr creds, pool string) (int64, error) {
	var avail int64
	err := g.call(ctx, cr, "ceph df", pool, func(c *conn) error {
		out, err := c.monCommand(map[string]any{"prefix": "df", "format": "json"})
		if err != nil {
			return err
		}
		var listed bool
		avail, listed, err = cephconn.MaxAvail(out, pool)
		if err != nil {
			return &Error{Kind: KindOther, Msg: err.Error()}
		}
		if listed {
			return nil
		}
		if _, err := c.ioctx(pool); err != nil {
			return err
		}
		// The managers report a new pool's statistics after a while.
		return &Error{Kind: KindUnreachable, Msg: "no statistics of pool " + pool + " yet: is a ceph-mgr running?"}
	})
	return avail, err
}
