package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
)

// hcloudMinSize is the smallest Hetzner Cloud volume: sizes round up to
// whole GiB, 10 GiB at least.
const hcloudMinSize = 10 * gib

// expectSize is the size a backend gives a volume asked for req bytes (0:
// its default).
func expectSize(c *harness.Cluster, req int64) int64 {
	if c.Backend == "hcloud" {
		return max(hcloudMinSize, (req+gib-1)/gib*gib)
	}
	if req == 0 {
		return gib
	}
	return req
}

// fakeCloudDir is where the hcloud tests' fake cloud keeps its images and
// by-id directories: in the plugins' data directory, so that the plugin
// sees the by-id links.
func fakeCloudDir(c *harness.Cluster) string { return filepath.Join(c.DataDir, "cloud") }

// hcloudImage is the fake cloud's image of an hcloud volume (its id is the
// Hetzner volume id).
func hcloudImage(c *harness.Cluster, volumeID string) string {
	return filepath.Join(fakeCloudDir(c), "volumes", volumeID+".img")
}

// The hcloud backend under Swarm: the plugin on a single-node swarm of its
// own, whose node is a server of the fake Hetzner Cloud API
// (cmd/swarm-csi-fakecloud) running in the node's network namespace, so
// the plugin reaches it on that namespace's 127.0.0.1. Attaching a volume
// makes a real loop device and its by-id link. Scenarios 2 and 3, then no
// volume is left in the cloud.
func TestHcloud(t *testing.T) {
	requireSwarm(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var cloud *exec.Cmd
	var ready struct {
		Endpoint string `json:"endpoint"`
		Servers  []struct {
			ID        int64  `json:"id"`
			DeviceDir string `json:"device_dir"`
		} `json:"servers"`
	}
	stopCloud := func() error {
		if cloud == nil {
			return nil
		}
		_ = cloud.Process.Signal(syscall.SIGTERM)
		err := cloud.Wait()
		cloud = nil
		return err
	}
	start := time.Now()
	c, err := harness.Start(ctx, logf, harness.Options{
		Nodes: 1, Backend: "hcloud",
		Setup: func(ctx context.Context, c *harness.Cluster) ([]string, error) {
			bin := filepath.Join(c.Root, "swarm-csi-fakecloud")
			if err := harness.BuildCommand(ctx, "./cmd/swarm-csi-fakecloud", bin); err != nil {
				return nil, fmt.Errorf("build the fake cloud: %w", err)
			}
			token := filepath.Join(c.DataDir, "hcloud-token")
			if err := os.WriteFile(token, []byte("e2e-token-5b1d\n"), 0o600); err != nil {
				return nil, err
			}
			readyFile := filepath.Join(c.Root, "fakecloud.json")
			cloud = exec.Command("nsenter", "--net=/run/netns/"+c.Manager().NetNS, bin,
				"--dir", fakeCloudDir(c), "--servers", "node1", "--token-file", token,
				"--action-delay", "200ms", "--ready-file", readyFile)
			log, err := os.Create(filepath.Join(c.Root, "fakecloud.log"))
			if err != nil {
				return nil, err
			}
			defer log.Close()
			cloud.Stdout, cloud.Stderr = log, log
			cloud.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
			if err := cloud.Start(); err != nil {
				return nil, err
			}
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				b, err := os.ReadFile(readyFile)
				if err == nil {
					if err := json.Unmarshal(b, &ready); err != nil {
						return nil, err
					}
					break
				}
				if time.Now().After(deadline) {
					return nil, errors.Join(errors.New("the fake cloud did not start within 30s"), stopCloud())
				}
			}
			if len(ready.Servers) != 1 {
				return nil, fmt.Errorf("the fake cloud made %d servers, want 1", len(ready.Servers))
			}
			rel, err := filepath.Rel(c.DataDir, ready.Servers[0].DeviceDir)
			if err != nil {
				return nil, err
			}
			logf("fake cloud at %s in %s; server %d", ready.Endpoint, c.Manager().NetNS, ready.Servers[0].ID)
			return []string{"BACKEND=hcloud", "HCLOUD_ENDPOINT=" + ready.Endpoint,
				"HCLOUD_TOKEN_FILE=/var/lib/swarm-csi/hcloud-token", "HCLOUD_CLUSTER=e2e", "HCLOUD_LOCATION=fsn1",
				"HCLOUD_SERVER_ID=" + strconv.FormatInt(ready.Servers[0].ID, 10),
				"HCLOUD_DEVICE_DIR=" + filepath.Join("/var/lib/swarm-csi", rel)}, nil
		},
	})
	if err != nil {
		t.Fatalf("bring up the hcloud swarm: %v", errors.Join(err, stopCloud()))
	}
	logf("hcloud swarm up in %s", time.Since(start).Round(time.Millisecond))
	defer func() {
		if err := c.Stop(); err != nil {
			t.Errorf("teardown of the hcloud swarm left something behind:\n%v", err)
		}
	}()
	// Before the swarm's teardown, which would kill it: on SIGTERM the
	// cloud detaches and removes whatever is left.
	defer func() {
		if err := stopCloud(); err != nil {
			t.Errorf("fake cloud: %v", err)
		}
	}()

	t.Run("volume create", func(t *testing.T) { testVolumeCreate(t, c) })
	t.Run("data survives service removal", func(t *testing.T) { testDataSurvives(t, c) })

	// The subtests removed their volumes, and Swarm deletes them in the
	// background: soon the cloud holds none.
	var vols []string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		vols, _ = filepath.Glob(filepath.Join(fakeCloudDir(c), "volumes", "*.img"))
		if len(vols) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(vols) > 0 {
		t.Errorf("volume images left in the fake cloud a minute after their volumes were removed: %v\n%s", vols, c.Manager().PluginLog())
	}
}
