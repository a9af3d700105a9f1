package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/identity"
)

func TestSocketPath(t *testing.T) {
	tests := []struct {
		endpoint string
		want     string // "" when an error is expected
	}{
		{"unix:///run/docker/plugins/csi.sock", "/run/docker/plugins/csi.sock"},
		{"/run/swarm-csi/csi.sock", "/run/swarm-csi/csi.sock"},
		{"unix:///run//x/../csi.sock", "/run/csi.sock"},
		{"tcp://127.0.0.1:10000", ""},
		{"unix://relative/csi.sock", ""},
		{"unix://", ""},
		{"csi.sock", ""},
		{"./csi.sock", ""},
		{"", ""},
		{"http:///abs/csi.sock", ""},
	}
	for _, tt := range tests {
		t.Run(tt.endpoint, func(t *testing.T) {
			got, err := SocketPath(tt.endpoint)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("SocketPath(%q) = %q, want an error", tt.endpoint, got)
				}
				if tt.endpoint != "" && !strings.Contains(err.Error(), tt.endpoint) {
					t.Errorf("error %q does not name the endpoint", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("SocketPath(%q) = %q, %v; want %q", tt.endpoint, got, err, tt.want)
			}
		})
	}
}

func dial(t *testing.T, path string) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	c.Close()
}

func TestListenCreatesDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "b", "csi.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dial(t, path)
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "csi.sock")
	old, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	// A process that died leaves its socket file behind.
	old.(*net.UnixListener).SetUnlinkOnClose(false)
	old.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("no stale socket to test with: %v, %v", fi, err)
	}
	l, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer l.Close()
	dial(t, path)
}

func TestListenRefusesLiveSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "csi.sock")
	live, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	go func() { // accept the probe connection
		for {
			c, err := live.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if l, err := Listen(path); err == nil {
		l.Close()
		t.Fatal("Listen took over a socket in use")
	} else if !strings.Contains(err.Error(), "in use") {
		t.Errorf("error %q does not say the socket is in use", err)
	}
	dial(t, path) // the live socket is untouched
}

func TestListenRefusesOtherFiles(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "dir")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{file, sub} {
		if l, err := Listen(path); err == nil {
			l.Close()
			t.Errorf("Listen(%s) succeeded over a non-socket", path)
		} else if !strings.Contains(err.Error(), "not a socket") {
			t.Errorf("Listen(%s): %v, want 'not a socket'", path, err)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "precious" {
		t.Fatalf("file changed: %q, %v", b, err)
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLogger(level slog.Level) (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: level})), buf
}

func call(log *slog.Logger, method string, req any, handler grpc.UnaryHandler) (any, error) {
	return interceptor(log)(context.Background(), req, &grpc.UnaryServerInfo{FullMethod: method}, handler)
}

func TestInterceptorCodes(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		wantCode  codes.Code
		wantLevel string
	}{
		{"ok", nil, codes.OK, "level=INFO"},
		{"sentinel", csierr.NotFound("volume %q", "v1"), codes.NotFound, "level=WARN"},
		{"wrapped sentinel", fmt.Errorf("publish: %w", fmt.Errorf("%w: node-a holds it", csierr.ErrInUse)), codes.FailedPrecondition, "level=WARN"},
		{"aborted", fmt.Errorf("%w: busy", csierr.ErrAborted), codes.Aborted, "level=WARN"},
		{"status", status.Error(codes.OutOfRange, "too big"), codes.OutOfRange, "level=WARN"},
		{"plain", errors.New("disk on fire"), codes.Internal, "level=ERROR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, buf := testLogger(slog.LevelDebug)
			resp, err := call(log, "/csi.v1.Controller/CreateVolume", &csi.CreateVolumeRequest{Name: "v1"},
				func(context.Context, any) (any, error) {
					if tt.err != nil {
						return nil, tt.err
					}
					return &csi.CreateVolumeResponse{}, nil
				})
			st, ok := status.FromError(err)
			if !ok || st.Code() != tt.wantCode {
				t.Fatalf("got %v (a status: %t), want code %v", err, ok, tt.wantCode)
			}
			if tt.err != nil && st.Message() != status.Convert(tt.err).Message() {
				t.Errorf("message %q, want %q", st.Message(), tt.err.Error())
			}
			if (tt.err == nil) != (resp != nil) {
				t.Errorf("response %v with error %v", resp, err)
			}
			line := buf.String()
			if strings.Count(line, "\n") != 1 || !strings.Contains(line, tt.wantLevel) ||
				!strings.Contains(line, "code="+tt.wantCode.String()) || !strings.Contains(line, "CreateVolume") {
				t.Errorf("log %q: want one %s line with code %v", line, tt.wantLevel, tt.wantCode)
			}
		})
	}
}

func TestInterceptorRecoversPanic(t *testing.T) {
	log, buf := testLogger(slog.LevelInfo)
	resp, err := call(log, "/csi.v1.Node/NodePublishVolume", &csi.NodePublishVolumeRequest{VolumeId: "v1"},
		func(context.Context, any) (any, error) {
			var m map[string]int
			m["boom"]++ // a nil map write: a real runtime panic
			return &csi.NodePublishVolumeResponse{}, nil
		})
	if resp != nil || status.Code(err) != codes.Internal {
		t.Fatalf("got %v, %v; want Internal", resp, err)
	}
	if !strings.Contains(buf.String(), "panic") || !strings.Contains(buf.String(), "NodePublishVolume") {
		t.Errorf("the panic was not logged: %q", buf.String())
	}
}

func TestInterceptorHidesSecrets(t *testing.T) {
	const secret = "s3cret"
	reqs := map[string]any{
		"/csi.v1.Node/NodeStageVolume": &csi.NodeStageVolumeRequest{VolumeId: "vol-1", StagingTargetPath: "/data/staged/x",
			Secrets: map[string]string{"key": secret}},
		"/csi.v1.Controller/CreateVolume": &csi.CreateVolumeRequest{Name: "vol-1", Secrets: map[string]string{"key": secret}},
		"/csi.v1.Controller/ControllerPublishVolume": &csi.ControllerPublishVolumeRequest{VolumeId: "vol-1", NodeId: "n",
			Secrets: map[string]string{"password": secret}},
	}
	results := map[string]error{"ok": nil, "error": csierr.Invalid("bad request"), "internal": errors.New("boom")}
	for method, req := range reqs {
		for name, result := range results {
			t.Run(method+"/"+name, func(t *testing.T) {
				log, buf := testLogger(slog.LevelDebug)
				_, _ = call(log, method, req, func(context.Context, any) (any, error) { return nil, result })
				out := buf.String()
				if !strings.Contains(out, "vol-1") {
					t.Fatalf("the request was not logged: %q", out)
				}
				if strings.Contains(out, secret) {
					t.Fatalf("secret in the log: %q", out)
				}
			})
		}
	}
	// Stripping must not change the request the handler sees.
	req := &csi.NodeStageVolumeRequest{VolumeId: "vol-1", Secrets: map[string]string{"key": secret}}
	log, _ := testLogger(slog.LevelDebug)
	_, _ = call(log, "/csi.v1.Node/NodeStageVolume", req, func(_ context.Context, r any) (any, error) {
		if got := r.(*csi.NodeStageVolumeRequest).GetSecrets()["key"]; got != secret {
			t.Errorf("handler got secret %q", got)
		}
		return nil, nil
	})
	if req.GetSecrets()["key"] != secret {
		t.Error("logging removed the secret from the request itself")
	}
}

// A request's secrets reach the backend through the context; a request
// without secrets leaves the context without any.
func TestInterceptorPassesSecrets(t *testing.T) {
	log, _ := testLogger(slog.LevelInfo)
	for _, tt := range []struct {
		req  any
		want map[string]string
	}{
		{&csi.ControllerPublishVolumeRequest{VolumeId: "v", Secrets: map[string]string{"token": "t1"}}, map[string]string{"token": "t1"}},
		{&csi.NodeStageVolumeRequest{VolumeId: "v", Secrets: map[string]string{"token": "t2"}}, map[string]string{"token": "t2"}},
		{&csi.ControllerGetVolumeRequest{VolumeId: "v"}, nil},
		{&csi.DeleteVolumeRequest{VolumeId: "v"}, nil},
	} {
		var got map[string]string
		_, _ = call(log, "/csi.v1.Controller/X", tt.req, func(ctx context.Context, _ any) (any, error) {
			got = backend.Secrets(ctx)
			return nil, nil
		})
		if !maps.Equal(got, tt.want) {
			t.Errorf("%T: backend sees secrets %v, want %v", tt.req, got, tt.want)
		}
	}
}

// A node request's publish context reaches the backend through the
// context, as the secrets do.
func TestInterceptorPassesPublishContext(t *testing.T) {
	log, _ := testLogger(slog.LevelInfo)
	pc := map[string]string{"fsType": "ext4"}
	for _, tt := range []struct {
		req  any
		want map[string]string
	}{
		{&csi.NodeStageVolumeRequest{VolumeId: "v", PublishContext: pc}, pc},
		{&csi.NodePublishVolumeRequest{VolumeId: "v", PublishContext: pc}, pc},
		{&csi.NodeStageVolumeRequest{VolumeId: "v"}, nil},
		{&csi.ControllerGetVolumeRequest{VolumeId: "v"}, nil},
	} {
		var got map[string]string
		_, _ = call(log, "/csi.v1.Node/X", tt.req, func(ctx context.Context, _ any) (any, error) {
			got = backend.PublishContext(ctx)
			return nil, nil
		})
		if !maps.Equal(got, tt.want) {
			t.Errorf("%T: backend sees publish context %v, want %v", tt.req, got, tt.want)
		}
	}
}

func TestInterceptorQuietCalls(t *testing.T) {
	handler := func(context.Context, any) (any, error) { return &csi.ProbeResponse{}, nil }
	log, buf := testLogger(slog.LevelInfo)
	if _, err := call(log, "/csi.v1.Identity/Probe", &csi.ProbeRequest{}, handler); err != nil {
		t.Fatal(err)
	}
	if buf.String() != "" {
		t.Errorf("a successful Probe was logged at info: %q", buf.String())
	}
	// A failing quiet call is not quiet.
	if _, err := call(log, "/csi.v1.Identity/Probe", &csi.ProbeRequest{}, func(context.Context, any) (any, error) {
		return nil, csierr.ErrUnavailable
	}); status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v", err)
	}
	if !strings.Contains(buf.String(), "level=WARN") {
		t.Errorf("failed Probe not logged: %q", buf.String())
	}
	debugLog, debugBuf := testLogger(slog.LevelDebug)
	if _, err := call(debugLog, "/csi.v1.Identity/Probe", &csi.ProbeRequest{}, handler); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(debugBuf.String(), "level=DEBUG") {
		t.Errorf("Probe not logged at debug: %q", debugBuf.String())
	}
}

// fakeController is a ControllerServer whose CreateVolume runs a function.
type fakeController struct {
	csi.UnimplementedControllerServer
	createVolume func(context.Context, *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error)
}

func (f *fakeController) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	return f.createVolume(ctx, req)
}

// TestServeOverSocket runs the server on a real socket, as Docker reaches
// it, and checks the codes a client sees.
func TestServeOverSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "csi.sock")
	lis, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	log, buf := testLogger(slog.LevelInfo)
	srv := New(log, Services{
		Identity: identity.New("swarm-csi", "test"),
		Controller: &fakeController{createVolume: func(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
			return nil, fmt.Errorf("%w: volume %q exists with other arguments", csierr.ErrAlreadyExists, req.GetName())
		}},
	})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()

	probe, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
	if err != nil || !probe.GetReady().GetValue() {
		t.Fatalf("Probe = %v, %v", probe, err)
	}
	_, err = csi.NewControllerClient(conn).CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "db",
		Secrets: map[string]string{"token": "s3cret"}})
	if st := status.Convert(err); st.Code() != codes.AlreadyExists || !strings.Contains(st.Message(), `"db"`) {
		t.Fatalf("CreateVolume: %v, want AlreadyExists naming the volume", err)
	}
	_, err = csi.NewControllerClient(conn).DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "x"})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("unimplemented controller call: %v", err)
	}
	// No node service was given: it is not registered.
	_, err = csi.NewNodeClient(conn).NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("NodeGetInfo without a node service: %v", err)
	}
	if strings.Contains(buf.String(), "s3cret") {
		t.Fatalf("secret in the log: %q", buf.String())
	}
}
