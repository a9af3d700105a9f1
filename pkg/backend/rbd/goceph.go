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
// image's header object (see readMeta); the index image's header is
// remembered, so that reading a record costs no open at all.
type goceph struct {
	conf  string   // ceph.conf: monitors and client timeouts
	index imageRef // the image whose metadata holds the records

	mu    sync.Mutex
	conns map[creds]*conn
}

// conn is one identity's connection.
type conn struct {
	// mu is held while connecting, and guards ioctxs and indexID.
	mu     sync.Mutex
	rados  *rados.Conn // nil until connected
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
		conns: map[creds]*conn{},
	}, nil
}

// connect returns cr's connection, connecting first if need be.
func (g *goceph) connect(cr creds) (*conn, error) {
	g.mu.Lock()
	c := g.conns[cr]
	if c == nil {
		c = &conn{ioctxs: map[string]*rados.IOContext{}}
		g.conns[cr] = c
	}
	g.mu.Unlock()

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rados != nil {
		return c, nil
	}
	r, err := rados.NewConnWithUser(cr.user)
	if err != nil {
		return nil, err
	}
	// A handle that never connects is freed by go-ceph's finalizer:
	// rados_shutdown is for connected ones.
	if err := r.ReadConfigFile(g.conf); err != nil {
		return nil, &Error{Kind: KindOther, Msg: fmt.Sprintf("read %s: %v", g.conf, err)}
	}
	if err := r.SetConfigOption("keyring", cr.keyring); err != nil {
		return nil, &Error{Kind: KindOther, Msg: fmt.Sprintf("keyring %s: %v", cr.keyring, err)}
	}
	// The libraries print nothing: the errors say what failed, and
	// librados would print the line of a key it cannot parse.
	for _, opt := range []string{"log_to_stderr", "err_to_stderr", "log_to_syslog", "err_to_syslog"} {
		if err := r.SetConfigOption(opt, "false"); err != nil {
			return nil, &Error{Kind: KindOther, Msg: fmt.Sprintf("%s: %v", opt, err)}
		}
	}
	if err := r.Connect(); err != nil {
		e := &Error{Kind: KindUnreachable, Msg: "no Ceph monitor answered: " + errnoText(err)}
		if errno(err) == syscall.EACCES || errno(err) == syscall.EPERM {
			e.Kind, e.Msg = KindAuth, "the monitors refused the cephx key of client."+cr.user+": "+errnoText(err)
		}
		return nil, e
	}
	c.rados = r
	return c, nil
}

// ioctx returns the connection's I/O context for pool; a pool that does
// not exist is KindNotFound.
func (c *conn) ioctx(pool string) (*rados.IOContext, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if io := c.ioctxs[pool]; io != nil {
		return io, nil
	}
	io, err := c.rados.OpenIOContext(pool)
	if err != nil {
		if errno(err) == syscall.ENOENT {
			return nil, &Error{Kind: KindNotFound, Msg: "pool " + pool + " does not exist"}
		}
		return nil, err
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
	for cr, c := range g.conns {
		c.mu.Lock()
		for _, io := range c.ioctxs {
			io.Destroy()
		}
		c.ioctxs = nil
		if c.rados != nil {
			c.rados.Shutdown()
			c.rados = nil
		}
		c.mu.Unlock()
		delete(g.conns, cr)
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
	c, err := g.connect(cr)
	if err == nil {
		if err = ctx.Err(); err != nil {
			return ctxError(cmd, err)
		}
		err = f(c)
	}
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		e.Cmd = cmd
		return e
	}
	return cephError(cmd, err)
}

// ctxError is the error of a call its context ended before it began, as
// the tools' runner reports it.
func ctxError(cmd string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Kind: KindTimeout, Cmd: cmd, Msg: "no answer within the time allowed"}
	}
	return fmt.Errorf("%s: %w", cmd, err)
}

// cephError classifies what librados or librbd answered by its errno, as
// classify does with the tools' exit codes.
func cephError(cmd string, err error) error {
	e := &Error{Kind: KindOther, Cmd: cmd, Msg: errnoText(err)}
	switch errno(err) {
	case syscall.ENOENT:
		e.Kind = KindNotFound
	case syscall.EEXIST:
		e.Kind = KindExists
	case syscall.EBUSY, syscall.ENOTEMPTY:
		e.Kind = KindBusy
	case syscall.ETIMEDOUT:
		e.Kind = KindTimeout
	case syscall.EACCES, syscall.EPERM:
		e.Kind = KindDenied
	case syscall.ENOSPC, syscall.EDQUOT:
		e.Kind = KindNoSpace
	case syscall.EINVAL, syscall.ERANGE:
		e.Kind = KindInvalid
	}
	return e
}

// errno is the error number of a librados or librbd error, 0 for another
// error.
func errno(err error) syscall.Errno {
	var ce interface{ ErrorCode() int }
	if errors.As(err, &ce) {
		if n := ce.ErrorCode(); n < 0 {
			return syscall.Errno(-n)
		}
	}
	return 0
}

// errnoText says what an error number means ("no such file or
// directory"), or what err says if it has none.
func errnoText(err error) string {
	if n := errno(err); n != 0 {
		return n.Error()
	}
	return err.Error()
}
