package e2e

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// Scenario 4: bad input. Each bad volume stays out of use with the
// driver's message in the plugin's log (dockerd's log: Swarm shows no
// error in docker volume inspect), and a good volume created after them
// still becomes created promptly: one bad volume does not block the queue.
func TestBadInputDoesNotBlockQueue(t *testing.T) {
	c := singleNode(t)
	e := newEnv(t, c)

	bad := []struct {
		name string
		args []string
		// want matches the driver's message in the plugin's log (where
		// dockerd escapes its quotes).
		want *regexp.Regexp
	}{
		{"s4-zfs", []string{"--type", "mount", "--opt", "fsType=zfs"},
			regexp.MustCompile(`code=InvalidArgument .*fsType \W*zfs\W* is not supported: use ext4 or xfs`)},
		{"s4-unknown", []string{"--type", "mount", "--opt", "foo=bar"},
			regexp.MustCompile(`code=InvalidArgument .*parameter \W*foo\W* is not supported; the loop backend accepts: `)},
		{"s4-multi-none", []string{"--type", "mount", "--scope", "multi", "--sharing", "none"},
			regexp.MustCompile(`code=InvalidArgument .*access mode UNKNOWN is not supported`)},
	}
	for _, b := range bad {
		e.createVolume(b.name, b.args...)
	}
	start := time.Now()
	e.createVolume("s4-good", "--type", "mount")
	_, _ = e.waitCreated("s4-good", 60*time.Second)
	prompt := time.Since(start)
	t.Logf("the good volume was created %s after docker volume create, behind %d bad ones", prompt.Round(time.Millisecond), len(bad))
	if prompt > 15*time.Second {
		t.Errorf("the good volume took %s to be created behind the bad ones: the queue is blocked", prompt)
	}

	// A service on a bad volume must not start.
	e.service("s4-bad-svc", "true", "--mount", "type=cluster,src=s4-zfs,dst=/data")

	deadline := time.Now().Add(30 * time.Second)
	for _, b := range bad {
		for {
			log := e.pluginLogSince(e.n)
			var line string
			for _, l := range strings.Split(log, "\n") {
				// The request in the line names the volume.
				if strings.Contains(l, "CreateVolume") && strings.Contains(l, b.name) && b.want.MatchString(l) {
					line = l
					break
				}
			}
			if line != "" {
				t.Logf("%s: the plugin log says: %s", b.name, shorten(line, 400))
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: no plugin log line matching %q; the plugin's log since the test started:\n%s", b.name, b.want, lastLines(strings.Split(log, "\n"), 40))
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		v, raw := e.inspectVolume(b.name)
		if v.VolumeID() != "" {
			t.Errorf("%s: the bad volume was created (VolumeID %s):\n%s", b.name, v.VolumeID(), raw)
		} else {
			t.Logf("%s: docker volume inspect says %q", b.name, v.Status())
		}
	}
	ts, err := e.n.Tasks(e.ctx, "s4-bad-svc")
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range ts {
		if tk.Status.State == "running" {
			t.Errorf("a task of a service on the bad volume s4-zfs runs: %+v", tk)
		}
		t.Logf("service on s4-zfs: task %s %s %q", tk.ID[:12], tk.Status.State, tk.Status.Err+tk.Status.Message)
	}
	e.removeService("s4-bad-svc")

	// Removing the bad volumes. Swarm accepts `docker volume rm` of a
	// volume still pending creation but keeps it, marked for deletion,
	// and goes on retrying CreateVolume; only --force drops it.
	for _, b := range bad {
		e.docker("volume", "rm", b.name)
	}
	time.Sleep(3 * time.Second)
	for _, b := range bad {
		v, _, err := e.n.InspectVolume(e.ctx, b.name)
		if err != nil {
			t.Logf("%s: gone after docker volume rm", b.name)
			continue
		}
		t.Logf("%s: still there (%s, availability %s) 3s after docker volume rm: Swarm keeps retrying CreateVolume; removing it with --force",
			b.name, v.Status(), v.ClusterVolume.Spec.Availability)
		e.docker("volume", "rm", "--force", b.name)
		e.waitVolumeGone(b.name, 30*time.Second)
	}
}

func shorten(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
