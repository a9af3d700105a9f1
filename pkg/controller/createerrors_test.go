package controller

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

func TestCreateErrorsKeepTheLastFailureOfEachName(t *testing.T) {
	s, fb := newServer(t, 0)
	clock := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s.createErrs.now = func() time.Time { clock = clock.Add(time.Second); return clock }
	ctx := context.Background()

	bad := mountReq("db")
	bad.Parameters = map[string]string{"fsType": "zfs"}
	for range 3 {
		if _, err := s.CreateVolume(ctx, bad); err == nil {
			t.Fatal("fsType=zfs created")
		}
	}
	// The backend fails the next one, with the request's secret in its
	// message: it never reaches the record.
	fb.createVolumeFn = func(context.Context, backend.VolumeSpec) error {
		return fmt.Errorf("%w: pool full; login with key s3cr3t-key refused", csierr.ErrResourceExhausted)
	}
	other := mountReq("cache")
	other.Secrets = map[string]string{"userKey": "s3cr3t-key"}
	if _, err := s.CreateVolume(ctx, other); err == nil {
		t.Fatal("created despite the backend's error")
	}

	got := s.CreateErrors()
	if len(got) != 2 || got[0].Name != "cache" || got[1].Name != "db" {
		t.Fatalf("record %+v, want cache then db", got)
	}
	db := got[1]
	if db.Code != "InvalidArgument" || !strings.Contains(db.Message, `"zfs"`) || db.Attempts != 3 ||
		!db.First.Equal(time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC)) || !db.Last.Equal(db.First.Add(2*time.Second)) {
		t.Errorf("db: %+v, want 3 InvalidArgument attempts naming zfs, from 03:04:06 to 03:04:08", db)
	}
	if c := got[0]; c.Code != "ResourceExhausted" || strings.Contains(c.Message, "s3cr3t") || !strings.Contains(c.Message, "key [secret] refused") {
		t.Errorf("cache: %+v, want ResourceExhausted with the secret blanked out", c)
	}

	// Created at last: forgotten.
	fb.createVolumeFn = nil
	mustCreate(t, s, other)
	if got := s.CreateErrors(); len(got) != 1 || got[0].Name != "db" {
		t.Errorf("after cache was created: %+v, want db only", got)
	}
}

func TestCreateErrorsAreBounded(t *testing.T) {
	r := newCreateErrors(3)
	fail := errors.New("boom")
	for _, n := range []string{"a", "b", "c", "a", "d"} {
		r.note(&csi.CreateVolumeRequest{Name: n}, fail)
	}
	var names []string
	for _, e := range r.list() {
		names = append(names, e.Name)
	}
	// b failed least recently: gone.
	if strings.Join(names, ",") != "d,a,c" {
		t.Errorf("record %v, want d,a,c", names)
	}
	if len(r.byName) != 3 {
		t.Errorf("index holds %d names, want 3", len(r.byName))
	}
	r.note(&csi.CreateVolumeRequest{Name: strings.Repeat("x", 10000)}, errors.New(strings.Repeat("y", 10000)))
	if e := r.list()[0]; len(e.Name) > maxCreateErrorText+3 || len(e.Message) > maxCreateErrorText+3 || e.Code != "Internal" {
		t.Errorf("a long name and message kept as %d and %d bytes (code %s)", len(e.Name), len(e.Message), e.Code)
	}
	r.note(&csi.CreateVolumeRequest{}, fail) // no name: nothing to key it by
	if len(r.list()) != 3 {
		t.Errorf("a nameless request was recorded")
	}
}

// The record is read through the plugin's socket, beside the CSI services.
func TestFetchCreateErrorsThroughTheSocket(t *testing.T) {
	s, _ := newServer(t, 0)
	bad := mountReq("db")
	bad.Parameters = map[string]string{"fsType": "zfs"}
	s.CreateVolume(context.Background(), bad)

	sock := filepath.Join(t.TempDir(), "csi.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	intercepted := 0
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if info.FullMethod == CreateErrorsMethod {
			intercepted++
		}
		return h(ctx, req)
	}))
	csi.RegisterControllerServer(srv, s)
	RegisterDiagnostics(srv, s)
	go srv.Serve(lis)
	defer srv.Stop()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got, err := FetchCreateErrors(context.Background(), conn)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "db" || got[0].Code != "InvalidArgument" || got[0].Attempts != 1 {
		t.Errorf("fetched %+v", got)
	}
	if intercepted != 1 {
		t.Errorf("the call went %d times through the server's interceptor, want 1 (one log line per call)", intercepted)
	}

	// A plugin without the service.
	bare := grpc.NewServer()
	csi.RegisterControllerServer(bare, s)
	sock2 := filepath.Join(t.TempDir(), "csi.sock")
	lis2, err := net.Listen("unix", sock2)
	if err != nil {
		t.Fatal(err)
	}
	go bare.Serve(lis2)
	defer bare.Stop()
	conn2, err := grpc.NewClient("unix://"+sock2, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	if _, err := FetchCreateErrors(context.Background(), conn2); status.Code(err) != codes.Unimplemented {
		t.Errorf("a plugin without the record: %v, want Unimplemented", err)
	}
}
