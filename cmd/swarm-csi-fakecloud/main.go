// Command swarm-csi-fakecloud runs the fake Hetzner Cloud API of package
// fakecloud on 127.0.0.1, for end-to-end tests of the hcloud backend: a
// Swarm whose nodes are the fake's servers, each node's driver given its
// server's metadata endpoint and by-id directory.
//
//	swarm-csi-fakecloud --dir DIR [--servers node-1,node-2] [--location fsn1]
//	    [--token-file FILE] [--action-delay 1s] [--port 0] [--ready-file FILE]
//	    [--enforce-rate-limit] [--rate-limit 3600] [--rate-refill 1s]
//
// When it serves, it prints (and writes to --ready-file) a JSON object
// with the API endpoint and each server's id, name, by-id directory and
// metadata endpoint. The request counts are at /fakecloud/requests. On
// SIGTERM or SIGINT it detaches every volume and removes its images.
// Attaching needs root (loop devices) unless --no-devices is given.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/backend/hcloud/fakecloud"
)

// Ready is what the command prints once it serves.
type Ready struct {
	Endpoint string             `json:"endpoint"`
	Servers  []fakecloud.Server `json:"servers"`
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "swarm-csi-fakecloud:", err)
		os.Exit(1)
	}
}

// run serves until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("swarm-csi-fakecloud", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory for the volumes' images and the servers' by-id directories (required)")
	servers := fs.String("servers", "node-1", "comma-separated names of the servers to create")
	location := fs.String("location", "fsn1", "location of the servers")
	token := fs.String("token", "", "the API token to accept (default: any)")
	tokenFile := fs.String("token-file", "", "file holding the API token to accept")
	delay := fs.Duration("action-delay", time.Second, "how long actions run")
	port := fs.Int("port", 0, "TCP port on 127.0.0.1 (0: any free one)")
	readyFile := fs.String("ready-file", "", "file to write the endpoints to once serving")
	noDevices := fs.Bool("no-devices", false, "link images instead of loop devices (no root needed)")
	rateLimit := fs.Bool("enforce-rate-limit", false, "answer 429 once the budget of requests (--rate-limit) is spent")
	budget := fs.Int("rate-limit", fakecloud.RateLimit, "the budget of requests, refilled by one every --rate-refill")
	refill := fs.Duration("rate-refill", fakecloud.RateRefill, "how long the budget takes to refill by one request")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case *dir == "":
		return errors.New("--dir is required")
	case *token != "" && *tokenFile != "":
		return errors.New("--token and --token-file are both set: use one")
	case *delay < 0:
		return fmt.Errorf("--action-delay %s: want a duration of 0 or more", *delay)
	case *budget < 1 || *refill <= 0:
		return fmt.Errorf("--rate-limit %d, --rate-refill %s: want a budget of at least 1 and a positive refill", *budget, *refill)
	case *port < 0 || *port > 65535:
		return fmt.Errorf("--port %d: want 0 to 65535", *port)
	}
	if *tokenFile != "" {
		data, err := os.ReadFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		*token = strings.TrimSpace(string(data))
	}
	cloud, err := fakecloud.Start(fakecloud.Options{Dir: *dir, Token: *token, ActionDelay: *delay, Port: *port,
		NoDevices: *noDevices, EnforceRateLimit: *rateLimit, RateLimit: *budget, RateRefill: *refill})
	if err != nil {
		return err
	}
	ready := Ready{Endpoint: cloud.URL()}
	for _, name := range strings.Split(*servers, ",") {
		s, err := cloud.AddServer(strings.TrimSpace(name), *location)
		if err != nil {
			return errors.Join(err, cloud.Close())
		}
		ready.Servers = append(ready.Servers, s)
	}
	out, err := json.MarshalIndent(ready, "", "  ")
	if err != nil {
		return errors.Join(err, cloud.Close())
	}
	if *readyFile != "" {
		tmp := *readyFile + ".tmp"
		if err := os.WriteFile(tmp, append(out, '\n'), 0o644); err != nil {
			return errors.Join(err, cloud.Close())
		}
		if err := os.Rename(tmp, *readyFile); err != nil {
			return errors.Join(err, cloud.Close())
		}
		defer os.Remove(*readyFile)
	}
	fmt.Fprintf(stdout, "%s\n", out)
	fmt.Fprintf(stderr, "serving the fake Hetzner Cloud API at %s (data in %s)\n", cloud.URL(), filepath.Clean(*dir))
	<-ctx.Done()
	return cloud.Close()
}
