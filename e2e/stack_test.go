package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/swarm-csi/swarm-csi/e2e/internal/harness"
)

// Scenario 5: a stack file whose service mounts a `type: cluster` volume
// created beforehand (external, with name:) deploys and sees its data.
// (docker stack deploy creates no cluster volume itself, moby #49257.)
func TestStackDeployExternalVolume(t *testing.T) {
	c := singleNode(t)
	e := newEnv(t, c)
	e.createVolume("s5-vol", "--type", "mount")
	e.waitCreated("s5-vol", 60*time.Second)

	token := fmt.Sprintf("stack-data-%d", time.Now().UnixNano())
	e.service("s5-writer", "echo "+token+" > /data/hello && sync", "--mount", "type=cluster,src=s5-vol,dst=/data")
	tk := e.waitRunning("s5-writer", 90*time.Second)
	if got := e.waitFile(tk, "/data/hello", 30*time.Second); got != token {
		t.Fatalf("wrote %q, read %q", token, got)
	}
	e.removeService("s5-writer")

	stack := fmt.Sprintf(`version: "3.8"
services:
  app:
    image: %s
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 1000000 & wait"]
    stop_grace_period: 5s
    volumes:
      - type: cluster
        source: data
        target: /data
volumes:
  data:
    external: true
    name: s5-vol
`, harness.BusyboxImage)
	file := filepath.Join(t.TempDir(), "stack.yml")
	if err := os.WriteFile(file, []byte(stack), 0o644); err != nil {
		t.Fatal(err)
	}
	e.track(&e.stacks, "s5")
	e.docker("stack", "deploy", "--detach=true", "--resolve-image", "never", "-c", file, "s5")
	tk = e.waitRunning("s5_app", 90*time.Second)
	if got := e.exec(tk, "cat /data/hello"); got != token {
		t.Fatalf("the stack's service reads %q from the external cluster volume, want %q", got, token)
	}
	out, _ := e.n.Docker(e.ctx, "stack", "ps", "--no-trunc", "s5")
	t.Logf("the stack's service sees the data written before:\n%s", strings.TrimSpace(out))
}
