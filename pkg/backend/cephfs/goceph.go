//go:build ceph && cgo

package cephfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"syscall"

	"github.com/ceph/go-ceph/cephfs"
	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/ceph/go-ceph/rados"

	"github.com/swarm-csi/swarm-csi/pkg/cephconn"
)

// CephSupport reports whether this build can reach Ceph.
const CephSupport = true

// recordNamespace is the RADOS namespace of the driver's records in the
// file system's metadata pool; they are the omap of one object per group.
const recordNamespace = "swarm-csi"

// goceph is the cluster over librados and libcephfs. It connects at its
// first call (again at the next call after connecting failed) and keeps
// the connection for the driver's life.
type goceph struct {
	cfg           Config
	conf, keyring string
	sess          cephconn.Lazy[*session]

	// mu guards mds.
	mu  sync.Mutex
	mds *cephfs.MountInfo
}

func openCluster(cfg Config, conf, keyring string) (cluster, error) {
	return &goceph{cfg: cfg, conf: conf, keyring: keyring}, nil
}

// session is what one call needs, connected.
type session struct {
	fsa   *admin.FSAdmin
	ioctx *rados.IOContext // the metadata pool, recordNamespace
	conn  *rados.Conn
	// dataPool is the file system's first data pool.
	dataPool string
}

// connect connects and finds the file system's pools.
func (g *goceph) connect() (*session, error) {
	conn, err := cephconn.Dial(g.conf, g.cfg.User, g.keyring, nil)
	if err != nil {
		return nil, err
	}
	fsa := admin.NewFromConn(conn)
	fss, err := fsa.ListFileSystems()
	if err != nil {
		conn.Shutdown()
		return nil, err
	}
	var meta, data string
	for _, f := range fss {
		if f.Name == g.cfg.FsName && len(f.DataPools) > 0 {
			meta, data = f.MetadataPool, f.DataPools[0]
		}
	}
	if meta == "" {
		conn.Shutdown()
		return nil, &Error{Op: "connect", Kind: KindNotFound, Err: fmt.Errorf("no file system %q (ceph fs ls)", g.cfg.FsName)}
	}
	ioctx, err := conn.OpenIOContext(meta)
	if err != nil {
		conn.Shutdown()
		return nil, err
	}
	ioctx.SetNamespace(recordNamespace)
	return &session{fsa: fsa, ioctx: ioctx, conn: conn, dataPool: data}, nil
}

// do runs f with a session, within ctx: a call the client timeouts have
// not ended by ctx's end is left to finish alone.
func (g *goceph) do(ctx context.Context, op string, f func(s *session) error) error {
	_, err := call(g, ctx, op, func(s *session) (struct{}, error) { return struct{}{}, f(s) })
	return err
}

// call is do for a call that answers a value: the value comes back with
// the call's end, so one left to finish alone writes nothing its caller
// still reads.
func call[T any](g *goceph, ctx context.Context, op string, f func(s *session) (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		s, err := g.sess.Get(ctx, g.connect)
		if err == nil {
			r.v, err = f(s)
		}
		r.err = err
		done <- r
	}()
	var zero T
	select {
	case r := <-done:
		if r.err != nil {
			// The connection stays: librados finds the monitors again
			// by itself, and a call left running (below) may still use
			// it.
			return zero, classify(op, r.err)
		}
		return r.v, nil
	case <-ctx.Done():
		return zero, &Error{Op: op, Kind: KindUnreachable, Err: ctx.Err()}
	}
}

// classify turns an error of go-ceph into an *Error of the right Kind.
func classify(op string, err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	kind := KindOther
	switch cephconn.Errno(err) {
	case syscall.ENOENT:
		kind = KindNotFound
	case syscall.EEXIST:
		kind = KindExists
	case syscall.ENOTEMPTY, syscall.EAGAIN, syscall.EBUSY:
		kind = KindBusy
	case syscall.EACCES, syscall.EPERM:
		kind = KindDenied
	case syscall.ETIMEDOUT, syscall.ENOTCONN, syscall.ESHUTDOWN, syscall.ECONNREFUSED, syscall.EINTR:
		kind = KindUnreachable
	case syscall.ENOSPC, syscall.EDQUOT:
		kind = KindNoSpace
	}
	return &Error{Op: op, Kind: kind, Err: err}
}

func (g *goceph) CreateGroup(ctx context.Context, group string) error {
	return g.do(ctx, "subvolumegroup create", func(s *session) error {
		return s.fsa.CreateSubVolumeGroup(g.cfg.FsName, group, nil)
	})
}

func (g *goceph) Create(ctx context.Context, group, name string, size int64, root rootDir) error {
	return g.do(ctx, "subvolume create", func(s *session) error {
		o := &admin.SubVolumeOptions{Size: admin.ByteCount(size), Uid: root.UID, Gid: root.GID, Mode: root.Mode}
		return s.fsa.CreateSubVolume(g.cfg.FsName, group, name, o)
	})
}

func (g *goceph) Info(ctx context.Context, group, name string) (*subvolInfo, error) {
	return call(g, ctx, "subvolume info", func(s *session) (*subvolInfo, error) {
		i, err := s.fsa.SubVolumeInfo(g.cfg.FsName, group, name)
		if err != nil {
			return nil, err
		}
		out := &subvolInfo{Path: i.Path, Used: int64(i.BytesUsed), CreatedAt: i.CreatedAt.Time}
		if q, ok := i.BytesQuota.(admin.ByteCount); ok {
			out.Quota = int64(q)
		}
		return out, nil
	})
}

func (g *goceph) Resize(ctx context.Context, group, name string, size int64) error {
	return g.do(ctx, "subvolume resize", func(s *session) error {
		_, err := s.fsa.ResizeSubVolume(g.cfg.FsName, group, name, admin.ByteCount(size), false)
		return err
	})
}

func (g *goceph) Remove(ctx context.Context, group, name string) error {
	return g.do(ctx, "subvolume rm", func(s *session) error {
		snaps, err := s.fsa.ListSubVolumeSnapshots(g.cfg.FsName, group, name)
		if err != nil {
			return err
		}
		// Snapshots outlive their subvolume: it goes with the last one.
		return s.fsa.RemoveSubVolumeWithFlags(g.cfg.FsName, group, name, admin.SubVolRmFlags{RetainSnapshots: len(snaps) > 0})
	})
}

func (g *goceph) List(ctx context.Context, group string) ([]string, error) {
	return call(g, ctx, "subvolume ls", func(s *session) ([]string, error) {
		return s.fsa.ListSubVolumes(g.cfg.FsName, group)
	})
}

func (g *goceph) SnapCreate(ctx context.Context, group, name, snap string) error {
	return g.do(ctx, "subvolume snapshot create", func(s *session) error {
		// Ceph answers 0 for a snapshot that exists: say so.
		if _, err := s.fsa.SubVolumeSnapshotInfo(g.cfg.FsName, group, name, snap); err == nil {
			return &Error{Op: "subvolume snapshot create", Kind: KindExists, Err: fmt.Errorf("snapshot %s of %s exists", snap, name)}
		}
		return s.fsa.CreateSubVolumeSnapshot(g.cfg.FsName, group, name, snap)
	})
}

func (g *goceph) SnapRemove(ctx context.Context, group, name, snap string) error {
	return g.do(ctx, "subvolume snapshot rm", func(s *session) error {
		return s.fsa.RemoveSubVolumeSnapshot(g.cfg.FsName, group, name, snap)
	})
}

func (g *goceph) Snapshots(ctx context.Context, group, name string) ([]string, error) {
	return call(g, ctx, "subvolume snapshot ls", func(s *session) ([]string, error) {
		return s.fsa.ListSubVolumeSnapshots(g.cfg.FsName, group, name)
	})
}

func (g *goceph) Clone(ctx context.Context, group, name, snap, target string) error {
	return g.do(ctx, "subvolume snapshot clone", func(s *session) error {
		return s.fsa.CloneSubVolumeSnapshot(g.cfg.FsName, group, name, snap, target, &admin.CloneOptions{TargetGroup: group})
	})
}

func (g *goceph) CloneState(ctx context.Context, group, target string) (cloneState, error) {
	return call(g, ctx, "clone status", func(s *session) (cloneState, error) {
		cs, err := s.fsa.CloneStatus(g.cfg.FsName, group, target)
		if err != nil {
			return "", err
		}
		return cloneState(cs.State), nil
	})
}

func (g *goceph) CancelClone(ctx context.Context, group, target string) error {
	return g.do(ctx, "clone cancel", func(s *session) error {
		return s.fsa.CancelClone(g.cfg.FsName, group, target)
	})
}

func (g *goceph) object() string { return "records." + g.cfg.Group }

func (g *goceph) Get(ctx context.Context, key string) ([]byte, error) {
	return call(g, ctx, "read record", func(s *session) ([]byte, error) {
		// The key sorts first among the keys it prefixes.
		m, err := s.ioctx.GetOmapValues(g.object(), "", key, 1)
		if err != nil {
			return nil, err
		}
		v, ok := m[key]
		if !ok {
			return nil, &Error{Op: "read record", Kind: KindNotFound, Err: fmt.Errorf("no record %s", key)}
		}
		return v, nil
	})
}

func (g *goceph) Put(ctx context.Context, key string, data []byte) error {
	return g.do(ctx, "write record", func(s *session) error {
		return s.ioctx.SetOmap(g.object(), map[string][]byte{key: data})
	})
}

func (g *goceph) Delete(ctx context.Context, key string) error {
	return g.do(ctx, "delete record", func(s *session) error {
		err := s.ioctx.RmOmapKeys(g.object(), []string{key})
		if errors.Is(err, rados.ErrNotFound) {
			return nil
		}
		return err
	})
}

func (g *goceph) Keys(ctx context.Context, prefix string) ([]string, error) {
	return call(g, ctx, "list records", func(s *session) ([]string, error) {
		m, err := s.ioctx.GetAllOmapValues(g.object(), "", prefix, 256)
		if errors.Is(err, rados.ErrNotFound) {
			return nil, nil
		}
		var out []string
		for k := range m {
			out = append(out, k)
		}
		return out, err
	})
}

// mdsCommand sends a command to every active MDS.
func (g *goceph) mdsCommand(s *session, cmd map[string]any) ([]byte, error) {
	g.mu.Lock()
	if g.mds == nil {
		// A client sharing the connection, never mounted: it only sends
		// commands.
		m, err := cephfs.CreateFromRados(s.conn)
		if err == nil {
			if err = m.Init(); err != nil {
				_ = m.Release()
			}
		}
		if err != nil {
			g.mu.Unlock()
			return nil, err
		}
		g.mds = m
	}
	m := g.mds
	g.mu.Unlock()
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	out, status, err := m.MdsCommand("*", [][]byte{b})
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, status)
	}
	return out, nil
}

func (g *goceph) Evict(ctx context.Context, id string) (int, error) {
	return call(g, ctx, "client evict", func(s *session) (int, error) {
		filter := "client_metadata." + mountKey + "=" + id
		out, err := g.mdsCommand(s, map[string]any{"prefix": "client ls", "filters": []string{filter}, "format": "json"})
		if err != nil {
			return 0, err
		}
		var ls []json.RawMessage
		if err := json.Unmarshal(out, &ls); err != nil {
			return 0, fmt.Errorf("client ls: %w", err)
		}
		if len(ls) == 0 {
			return 0, nil
		}
		_, err = g.mdsCommand(s, map[string]any{"prefix": "client evict", "filters": []string{filter}})
		return len(ls), err
	})
}

func (g *goceph) Available(ctx context.Context) (int64, error) {
	return call(g, ctx, "df", func(s *session) (int64, error) {
		out, _, err := s.conn.MonCommand([]byte(`{"prefix":"df","format":"json"}`))
		if err != nil {
			return 0, err
		}
		if avail, listed, err := cephconn.MaxAvail(out, s.dataPool); err != nil || listed {
			return avail, err
		}
		// Pools appear in ceph df once the mgr has reported their
		// statistics; until then, the cluster's raw free space.
		st, err := s.conn.GetClusterStats()
		if err != nil {
			return 0, err
		}
		return int64(st.Kb_avail) * 1024, nil
	})
}
