package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
	"github.com/hetznercloud/hcloud-go/v2/hcloud/metadata"

	hcloudbe "github.com/swarm-csi/swarm-csi/pkg/backend/hcloud"
	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

// metadataTimeout bounds the start-up question to the metadata service.
const metadataTimeout = 5 * time.Second

type hcloudSettings struct {
	token, tokenFile, endpoint, location, cluster string
	serverID, metadataEndpoint, deviceDir, wait   string
}

func init() {
	registerBackend("hcloud", func(fs *flag.FlagSet, env func(string, string) string) opener {
		s := &hcloudSettings{}
		fs.StringVar(&s.token, "hcloud-token", env("HCLOUD_TOKEN", ""), "Hetzner Cloud API token (env HCLOUD_TOKEN; prefer --hcloud-token-file)")
		fs.StringVar(&s.tokenFile, "hcloud-token-file", env("HCLOUD_TOKEN_FILE", ""), "file holding the Hetzner Cloud API token (env HCLOUD_TOKEN_FILE)")
		fs.StringVar(&s.endpoint, "hcloud-endpoint", env("HCLOUD_ENDPOINT", hcloud.Endpoint), "Hetzner Cloud API endpoint (env HCLOUD_ENDPOINT)")
		fs.StringVar(&s.location, "hcloud-location", env("HCLOUD_LOCATION", ""), "location of new volumes, e.g. fsn1 (env HCLOUD_LOCATION; default the server's own)")
		fs.StringVar(&s.cluster, "hcloud-cluster", env("HCLOUD_CLUSTER", ""), "label value naming this swarm's volumes (env HCLOUD_CLUSTER; required)")
		fs.StringVar(&s.serverID, "hcloud-server-id", env("HCLOUD_SERVER_ID", ""), "this server's id, the node id (env HCLOUD_SERVER_ID; default from the metadata service)")
		fs.StringVar(&s.metadataEndpoint, "hcloud-metadata-endpoint", env("HCLOUD_METADATA_ENDPOINT", metadata.Endpoint), "metadata service (env HCLOUD_METADATA_ENDPOINT)")
		fs.StringVar(&s.deviceDir, "hcloud-device-dir", env("HCLOUD_DEVICE_DIR", hcloudbe.DefaultDeviceDir), "where attached volumes appear as scsi-0HC_Volume_<id> (env HCLOUD_DEVICE_DIR)")
		fs.StringVar(&s.wait, "hcloud-wait", env("HCLOUD_WAIT", hcloudbe.DefaultWait.String()), "longest a call waits for an action or a device before answering, to be retried (env HCLOUD_WAIT)")
		return s.open
	})
}

// open checks the settings, asks the metadata service what it must, and
// opens the backend. It makes no API call.
func (s *hcloudSettings) open(ctx context.Context, c *config) (*openedBackend, error) {
	token, err := s.readToken()
	if err != nil {
		return nil, err
	}
	if err := hcloudbe.CheckEndpoint(s.endpoint); err != nil {
		return nil, fmt.Errorf("--hcloud-endpoint (HCLOUD_ENDPOINT): %w", err)
	}
	if err := hcloudbe.CheckCluster(s.cluster); err != nil {
		return nil, fmt.Errorf("--hcloud-cluster (HCLOUD_CLUSTER): %w", err)
	}
	wait, err := time.ParseDuration(s.wait)
	if err != nil || wait <= 0 {
		return nil, fmt.Errorf("--hcloud-wait (HCLOUD_WAIT) %q: want a positive duration such as 10s", s.wait)
	}
	if !filepath.IsAbs(s.deviceDir) || filepath.Clean(s.deviceDir) != s.deviceDir {
		return nil, fmt.Errorf("--hcloud-device-dir (HCLOUD_DEVICE_DIR) %q: want a clean absolute path", s.deviceDir)
	}
	var server hcloudbe.ServerInfo
	if s.serverID != "" {
		id, err := strconv.ParseInt(s.serverID, 10, 64)
		if err != nil || id <= 0 || strconv.FormatInt(id, 10) != s.serverID {
			return nil, fmt.Errorf("--hcloud-server-id (HCLOUD_SERVER_ID) %q: want a Hetzner Cloud server id, a positive number", s.serverID)
		}
		server.ID = id
	}
	location := s.location
	if server.ID == 0 || location == "" {
		if err := hcloudbe.CheckEndpoint(s.metadataEndpoint); err != nil {
			return nil, fmt.Errorf("--hcloud-metadata-endpoint (HCLOUD_METADATA_ENDPOINT): %w", err)
		}
		mctx, cancel := context.WithTimeout(ctx, metadataTimeout)
		md, err := hcloudbe.FromMetadata(mctx, s.metadataEndpoint, metadataTimeout)
		cancel()
		if err != nil {
			missing := "--hcloud-server-id (HCLOUD_SERVER_ID)"
			if server.ID != 0 {
				missing = "--hcloud-location (HCLOUD_LOCATION)"
			}
			return nil, fmt.Errorf("%s is not set, and the metadata service (--hcloud-metadata-endpoint, HCLOUD_METADATA_ENDPOINT) did not say it: %w", missing, err)
		}
		if server.ID == 0 {
			server.ID = md.ID
		}
		if location == "" {
			location = md.Location
		}
	}
	// Every API request is a backend call in the metrics, by route.
	prefix := ""
	if u, err := url.Parse(s.endpoint); err == nil {
		prefix = strings.TrimSuffix(u.Path, "/")
	}
	be, err := hcloudbe.New(hcloudbe.Config{
		HTTPClient: &http.Client{Transport: &metrics.Transport{Backend: "hcloud", Strip: prefix}},
		Token:      token,
		Endpoint:   s.endpoint,
		Location:   location,
		Cluster:    s.cluster,
		Wait:       wait,
		Version:    versionString(),
		Log:        c.log,
	})
	if err != nil {
		return nil, fmt.Errorf("--hcloud-location (HCLOUD_LOCATION): %w", err)
	}
	nodeSide, err := be.ForNode(server.ID, s.deviceDir)
	if err != nil {
		return nil, err
	}
	return &openedBackend{controller: be, node: nodeSide, topology: be.Topology(), nodeID: strconv.FormatInt(server.ID, 10)}, nil
}

// readToken returns the API token from --hcloud-token or the file named by
// --hcloud-token-file. It may be empty: requests can carry it as the
// secret hcloudToken. Errors never contain the token.
func (s *hcloudSettings) readToken() (string, error) {
	token := s.token
	if s.tokenFile != "" {
		if s.token != "" {
			return "", errors.New("--hcloud-token (HCLOUD_TOKEN) and --hcloud-token-file (HCLOUD_TOKEN_FILE) are both set: use one")
		}
		data, err := os.ReadFile(s.tokenFile)
		if err != nil {
			return "", fmt.Errorf("--hcloud-token-file (HCLOUD_TOKEN_FILE): %w", err)
		}
		if token = strings.TrimSpace(string(data)); token == "" {
			return "", fmt.Errorf("--hcloud-token-file (HCLOUD_TOKEN_FILE) %s is empty", s.tokenFile)
		}
	}
	for _, r := range token {
		if r <= ' ' || r > '~' {
			return "", errors.New("--hcloud-token (HCLOUD_TOKEN) or the file of --hcloud-token-file (HCLOUD_TOKEN_FILE): the token contains whitespace or characters a token cannot have")
		}
	}
	return token, nil
}
