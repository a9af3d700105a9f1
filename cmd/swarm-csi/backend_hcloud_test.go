package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/swarm-csi/swarm-csi/pkg/backend/hcloud/fakecloud"
)

// fakeServer starts a fake Hetzner Cloud with one server in nbg1.
func fakeServer(t *testing.T) (*fakecloud.Cloud, fakecloud.Server) {
	t.Helper()
	cloud, err := fakecloud.Start(fakecloud.Options{Dir: t.TempDir(), Token: "tok", NoDevices: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cloud.Close() })
	s, err := cloud.AddServer("node-1", "nbg1")
	if err != nil {
		t.Fatal(err)
	}
	return cloud, s
}

func writeToken(t *testing.T, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestHcloudBackendOpens checks the wiring of the hcloud backend: the
// node id and location come from the metadata service, the token from its
// file, and both sides serve.
func TestHcloudBackendOpens(t *testing.T) {
	cloud, s := fakeServer(t)
	env := map[string]string{
		"BACKEND":                  "hcloud",
		"HCLOUD_TOKEN_FILE":        writeToken(t, "tok\n"),
		"HCLOUD_ENDPOINT":          cloud.URL(),
		"HCLOUD_CLUSTER":           "swarm-1",
		"HCLOUD_METADATA_ENDPOINT": s.MetadataURL,
		"HCLOUD_DEVICE_DIR":        s.DeviceDir,
	}
	c, err := parseConfig([]string{"--data-dir=" + t.TempDir()}, envOf(env), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	be, err := c.open(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if be.nodeID != strconv.FormatInt(s.ID, 10) || be.topology["swarm-csi/location"] != "nbg1" {
		t.Fatalf("node id %q, topology %v", be.nodeID, be.topology)
	}
	if info := be.controller.Info(); info.Name != "hcloud" || info.MaxVolumesPerNode != 16 {
		t.Fatalf("Info %+v", info)
	}
	if err := be.node.Register(context.Background(), be.nodeID); err != nil {
		t.Fatal(err)
	}
	// The token works: the API answers.
	if _, err := be.controller.ListVolumes(context.Background()); err != nil {
		t.Fatal(err)
	}

	// With the server id and location given, the metadata service is
	// not asked.
	env["HCLOUD_METADATA_ENDPOINT"] = "http://127.0.0.1:1/none"
	c, err = parseConfig([]string{"--data-dir=/x", "--hcloud-server-id=77", "--hcloud-location=hel1"}, envOf(env), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if be, err = c.open(context.Background(), c); err != nil || be.nodeID != "77" || be.topology["swarm-csi/location"] != "hel1" {
		t.Fatalf("with overrides: %+v, %v", be, err)
	}
}

func TestHcloudSettingsInvalid(t *testing.T) {
	_, s := fakeServer(t)
	base := map[string]string{
		"BACKEND":                  "hcloud",
		"NODE_ID":                  "n1",
		"HCLOUD_TOKEN":             "tok",
		"HCLOUD_CLUSTER":           "swarm-1",
		"HCLOUD_METADATA_ENDPOINT": s.MetadataURL,
		"HCLOUD_DEVICE_DIR":        s.DeviceDir,
	}
	tests := []struct {
		flag, env string
		values    []string
	}{
		{"hcloud-endpoint", "HCLOUD_ENDPOINT", []string{"api.hetzner.cloud", "ftp://x/v1", "https://"}},
		{"hcloud-cluster", "HCLOUD_CLUSTER", []string{"my swarm", "-x", strings.Repeat("c", 64)}},
		{"hcloud-wait", "HCLOUD_WAIT", []string{"0s", "-1s", "soon", "10"}},
		{"hcloud-device-dir", "HCLOUD_DEVICE_DIR", []string{"dev/disk", "/dev/../dev/disk"}},
		{"hcloud-server-id", "HCLOUD_SERVER_ID", []string{"0", "-5", "abc", "007"}},
		{"hcloud-location", "HCLOUD_LOCATION", []string{"FSN1", "f", "fsn 1"}},
		{"hcloud-token", "HCLOUD_TOKEN", []string{"two words", "tab\there"}},
		{"hcloud-token-file", "HCLOUD_TOKEN_FILE", []string{"/nonexistent/token", writeToken(t, "  \n")}},
		{"hcloud-metadata-endpoint", "HCLOUD_METADATA_ENDPOINT", []string{"not a url", "http://127.0.0.1:1/nothing-listens"}},
	}
	for _, tt := range tests {
		for _, v := range tt.values {
			for _, viaEnv := range []bool{false, true} {
				env := map[string]string{}
				for k, val := range base {
					env[k] = val
				}
				var args []string
				if tt.flag == "hcloud-token-file" {
					delete(env, "HCLOUD_TOKEN")
				}
				if viaEnv {
					env[tt.env] = v
				} else {
					args = append(args, "--"+tt.flag+"="+v)
				}
				name := tt.flag + "=" + v
				if viaEnv {
					name = tt.env + "=" + v
				}
				t.Run(name, func(t *testing.T) {
					c, err := parseConfig(append(args, "--data-dir=/x"), envOf(env), io.Discard)
					if err == nil {
						_, err = c.open(context.Background(), c)
					}
					if err == nil {
						t.Fatal("accepted")
					}
					if !strings.Contains(err.Error(), "--"+tt.flag) || !strings.Contains(err.Error(), tt.env) {
						t.Fatalf("error %q names neither --%s nor %s", err, tt.flag, tt.env)
					}
					if strings.Contains(tt.flag, "token") && strings.Contains(err.Error(), v) && !strings.HasPrefix(v, "/") {
						t.Fatalf("the error repeats the token: %q", err)
					}
				})
			}
		}
	}
	// Both a token and a token file.
	env := map[string]string{}
	for k, val := range base {
		env[k] = val
	}
	env["HCLOUD_TOKEN_FILE"] = writeToken(t, "tok")
	c, err := parseConfig([]string{"--data-dir=/x"}, envOf(env), io.Discard)
	if err == nil {
		_, err = c.open(context.Background(), c)
	}
	if err == nil || !strings.Contains(err.Error(), "both") {
		t.Fatalf("token and token file: %v", err)
	}
}
