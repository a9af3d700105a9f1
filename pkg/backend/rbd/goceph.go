//go:build ceph && cgo

package rbd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/rados"

	"github.com/swarm-csi/swarm-csi/pkg/cephconn"
	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

// CephSupport reports whether this build can reach Ceph.
const CephSupport = true

// goceph is the cluster in process, through librados and librbd: one
// connection for each identity, made on its first use and kept. librados
// hunts for another monitor when one goes away, so a connection outlives
// a monitor's outage; its calls meanwhile fail within the timeouts of the
// configuration. A connection that could not be made is not kept: the
// next call tries again.
//
// Images are opened for each call and closed before it returns, read-only
// where the call allows: a read-write open registers a watcher, which
// Remove and fencing would take for a client. Metadata is read from the
// image's header object (see onHeader); the index image's header is
// remembered, so that reading or writing a record costs no open at all.
type goceph struct {
	conf  string   // ceph.conf: monitors and client timeouts
	index imageRef // the image whose metadata holds the records

	// mu guards conns.
	mu    sync.Mutex
	conns map[creds]*cephconn.Lazy[*conn]
}

// conn is one identity's connection.
type conn struct {
	rados *rados.Conn

	// mu guards ioctxs and indexID.
	mu     sync.Mutex
	ioctxs map[string]*rados.IOContext
	// indexID is the id of the index image, once looked up.
	indexID string
}

var _ cluster = (*goceph)(nil)

// openCluster returns the cluster of cfg, reached through the
// configuration file conf. Nothing contacts Ceph before the first call.
func openCluster(cfg Config, conf string) (cluster, error) {
	return &goceph{
		conf:  conf,
		index: imageRef{cfg.Pool, names{prefix: cfg.Prefix}.index()},
		conns: map[creds]*cephconn.Lazy[*conn]{},
	}, nil
}

// connect returns cr's connection, connecting first if need be. It waits
// no longer than ctx allows for an attempt under way, which goes on and
// keeps its connection if it succeeds.
func (g *goceph) connect(ctx context.Context, cr creds) (*conn, error) {
	g.mu.Lock()
	l := g.conns[cr]
	if l == nil {
		l = &cephconn.Lazy[*conn]{}
		g.conns[cr] = l
	}
	g.mu.Unlock()
	return l.Get(ctx, func() (*conn, error) { return g.dial(cr) })
}

// dial connects as cr: within client_mount_timeout, or fails.
func (g *goceph) dial(cr creds) (*conn, error) {
	r, err := cephconn.Dial(g.conf, cr.user, cr.keyring, func(r *rados.Conn) error {
		// librbd waits for the exclusive lock's owner to carry out a
		// request (a resize of a mapped image)
		// rbd_request_timed_out_seconds, 30 by default: no longer than
		// for an OSD.
		if t, err := r.GetConfigOption("rados_osd_op_timeout"); err == nil && t != "0" {
			return r.SetConfigOption("rbd_request_timed_out_seconds", t)
		}
		return nil
	})
	if err == nil {
		return &conn{rados: r, ioctxs: map[string]*rados.IOContext{}}, nil
	}
	switch errno(err) {
	case 0: // the configuration could not be read or set
		return nil, &Error{Kind: KindOther, Msg: err.Error()}
	case syscall.EACCES, syscall.EPERM:
		return nil, &Error{Kind: KindAuth, Msg: "the monitors refused the cephx key of client." + cr.user + ": " + errnoText(err)}
	case syscall.ETIMEDOUT:
		return nil, &Error{Kind: KindUnreachable, Msg: "no Ceph monitor answered: " + errnoText(err)}
	}
	// EIO: among others, a keyring librados cannot read.
	return nil, &Error{Kind: KindUnreachable, Msg: "cannot connect as client." + cr.user + " with keyring " + cr.keyring + ": " + errnoText(err)}
}

// ioctx returns the connection's I/O context for pool; a pool that does
// not exist is KindNotFound.
func (c *conn) ioctx(pool string) (*rados.IOContext, error) {
	c.mu.Lock()
	io := c.ioctxs[pool]
	c.mu.Unlock()
	if io != nil {
		return io, nil
	}
	// Not under mu: a pool missing from the OSD map is looked for in the
	// monitors' latest.
	io, err := c.rados.OpenIOContext(pool)
	if err != nil {
		if errno(err) == syscall.ENOENT {
			return nil, &Error{Kind: KindNotFound, Msg: "pool " + pool + " does not exist"}
		}
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if first := c.ioctxs[pool]; first != nil {
		io.Destroy()
		return first, nil
	}
	c.ioctxs[pool] = io
	return io, nil
}

// Close destroys every I/O context and shuts every connection down. No
// call may run at the same time or after: an image still open when its
// connection shuts down could never be closed.
func (g *goceph) Close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, l := range g.conns {
		l.Close(func(c *conn) {
			c.mu.Lock()
			defer c.mu.Unlock()
			for _, io := range c.ioctxs {
				io.Destroy()
			}
			c.ioctxs = nil
			c.rados.Shutdown()
		})
	}
}

// call runs one operation as cr and records it in the metrics. op names
// it as the rbd tool would ("rbd snap create"), what the object it acts
// on; both name it in errors. f gets the connection.
func (g *goceph) call(ctx context.Context, cr creds, op, what string, f func(*conn) error) error {
	start := time.Now()
	cmd := op
	if what != "" {
		cmd += " " + what
	}
	err := g.run(ctx, cr, cmd, f)
	metrics.BackendCall("rbd", op, outcome(err), time.Since(start))
	return err
}

func (g *goceph) run(ctx context.Context, cr creds, cmd string, f func(*conn) error) error {
	if err := ctx.Err(); err != nil {
		return ctxError(cmd, err)
	}
	c, err := g.connect(ctx, cr)
	if err == nil {
		// Connecting may have taken what time ctx had.
		if err = ctx.Err(); err == nil {
			err = f(c)
		}
	}
	var e *Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &e):
		named := *e // a failed dial's error is every waiter's
		named.Cmd = cmd
		return &named
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return ctxError(cmd, err)
	}
	return cephError(cmd, err)
}

// ctxError is the error of a call whose context ended, as the tools'
// runner reports it.
func ctxError(cmd string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Kind: KindTimeout, Cmd: cmd, Msg: "no answer within the time allowed"}
	}
	return fmt.Errorf("%s: %w", cmd, err)
}

// cephError classifies what librados or librbd answered by its errno, as
// classify does with the tools' exit codes.
func cephError(cmd string, err error) error {
	return &Error{Kind: kindOf(errno(err)), Cmd: cmd, Msg: errnoText(err)}
}

// errno is the error number of a librados or librbd error, 0 for another
// error.
func errno(err error) syscall.Errno { return cephconn.Errno(err) }

// errnoText says what an error number means ("no such file or
// directory"), or what err says if it has none.
func errnoText(err error) string {
	if n := errno(err); n != 0 {
		return n.Error()
	}
	return err.Error()
}
