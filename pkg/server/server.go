// Package server runs the CSI services on a unix socket, with one log line
// per call and every error turned into the gRPC code the CSI spec names.
package server

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

// SocketPath returns the filesystem path of an endpoint given as
// unix:///path or as a plain absolute path.
func SocketPath(endpoint string) (string, error) {
	p := endpoint
	if rest, ok := strings.CutPrefix(endpoint, "unix://"); ok {
		p = rest
	} else if strings.Contains(endpoint, "://") {
		return "", fmt.Errorf("endpoint %q: only unix:// sockets are supported", endpoint)
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("endpoint %q: the socket path must be absolute", endpoint)
	}
	return filepath.Clean(p), nil
}

// Listen opens the unix socket at path, creating its directory. A stale
// socket left by a previous process is replaced; a live one is an error.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	return net.Listen("unix", path)
}

// Services are the CSI services to serve; all but Identity may be nil.
type Services struct {
	Identity        csi.IdentityServer
	Controller      csi.ControllerServer
	GroupController csi.GroupControllerServer
	Node            csi.NodeServer
}

// New returns a gRPC server with the services registered.
func New(log *slog.Logger, s Services) *grpc.Server {
	srv := grpc.NewServer(grpc.UnaryInterceptor(interceptor(log)))
	csi.RegisterIdentityServer(srv, s.Identity)
	if s.Controller != nil {
		csi.RegisterControllerServer(srv, s.Controller)
	}
	if s.GroupController != nil {
		csi.RegisterGroupControllerServer(srv, s.GroupController)
	}
	if s.Node != nil {
		csi.RegisterNodeServer(srv, s.Node)
	}
	return srv
}

// quiet calls are logged at debug level: COs poll them.
var quiet = map[string]bool{
	"/csi.v1.Identity/Probe":                       true,
	"/csi.v1.Identity/GetPluginInfo":               true,
	"/csi.v1.Identity/GetPluginCapabilities":       true,
	"/csi.v1.Controller/ControllerGetCapabilities": true,
	"/csi.v1.Node/NodeGetCapabilities":             true,
}

// interceptor logs one line per call, with secrets stripped from the
// request, converts errors to status codes, and turns a panic into an
// Internal error instead of a crash.
func interceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		start := time.Now()
		done := metrics.RPCStarted(info.FullMethod)
		defer func() {
			if r := recover(); r != nil {
				log.Error("panic in handler", "method", info.FullMethod, "panic", r)
				resp, err = nil, status.Errorf(codes.Internal, "internal error in %s", info.FullMethod)
			}
			err = csierr.Status(err)
			code := status.Code(err)
			done(code.String())
			level := slog.LevelInfo
			switch {
			case code == codes.Internal || code == codes.Unknown:
				level = slog.LevelError
			case code != codes.OK:
				level = slog.LevelWarn
			case quiet[info.FullMethod]:
				level = slog.LevelDebug
			}
			if !log.Enabled(ctx, level) {
				return
			}
			attrs := []any{"method", info.FullMethod, "code", code.String(), "ms", float64(time.Since(start).Microseconds()) / 1000,
				"request", protosanitizer.StripSecrets(req).String()}
			if err != nil {
				attrs = append(attrs, "error", status.Convert(err).Message())
			}
			log.Log(ctx, level, "rpc", attrs...)
		}()
		// Backends that take credentials from a request's secrets find
		// them in the context; the log line above never shows them.
		if r, ok := req.(interface{ GetSecrets() map[string]string }); ok {
			ctx = backend.WithSecrets(ctx, r.GetSecrets())
		}
		// NodeStageVolume and NodePublishVolume carry what ControllerPublishVolume returned.
		if r, ok := req.(interface{ GetPublishContext() map[string]string }); ok {
			ctx = backend.WithPublishContext(ctx, r.GetPublishContext())
		}
		return handler(ctx, req)
	}
}
