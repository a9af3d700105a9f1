package rbd

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// The krbd and nbd modes cannot run on a kernel without their modules;
// these tests pin the exact commands they run and how they read the
// answers.
func TestMapperCommands(t *testing.T) {
	for _, mode := range []string{ModeKRBD, ModeNBD} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			mapped := map[string]string{} // image spec -> device
			run := &fakeRunner{answers: map[string]func([]string) ([]byte, error){
				"device list": func(args []string) ([]byte, error) {
					if strings.Join(args, " ") != "device list -t "+mode+" --format json" {
						return nil, fmt.Errorf("unexpected %v", args)
					}
					var entries []string
					for spec, dev := range mapped {
						pool, image, _ := strings.Cut(spec, "/")
						key := "name" // krbd
						if mode == ModeNBD {
							key = "image"
						}
						entries = append(entries, fmt.Sprintf(`{"id":"0","pool":%q,"namespace":"",%q:%q,"snap":"-","device":%q}`, pool, key, image, dev))
					}
					return []byte("[" + strings.Join(entries, ",") + "]"), nil
				},
				"device map": func(args []string) ([]byte, error) {
					dev := "/dev/rbd0"
					if mode == ModeNBD {
						dev = "/dev/nbd0"
					}
					mapped[args[len(args)-1]] = dev
					return []byte(dev + "\n"), nil
				},
				"device unmap": func(args []string) ([]byte, error) {
					for spec, dev := range mapped {
						if dev == args[len(args)-1] {
							delete(mapped, spec)
							return nil, nil
						}
					}
					return nil, exitErr(22, "rbd: unmap failed: (22) Invalid argument\n")
				},
			}}
			b := newAttachBackend(t, run)
			n, err := b.ForNode("node-1", mode)
			if err != nil {
				t.Fatal(err)
			}
			id := "rbd/" + b.names.volumeImage(nameHash("v"))
			v := &backend.Volume{ID: id, VolumeSpec: backend.VolumeSpec{CapacityBytes: backend.GiB}}
			conn := fmt.Sprintf("-c %s --id swarm-csi --keyring %s", b.cli.conf, b.creds.keyring)

			dev, err := n.Attach(ctx, v, nil)
			wantDev := map[string]string{ModeKRBD: "/dev/rbd0", ModeNBD: "/dev/nbd0"}[mode]
			if err != nil || dev != wantDev {
				t.Fatalf("Attach = %q, %v", dev, err)
			}
			// Attached: the same device, found from the id alone.
			if again, err := n.Attach(ctx, v, nil); again != dev || err != nil {
				t.Fatalf("second Attach = %q, %v", again, err)
			}
			if got, err := n.Device(ctx, id); got != dev || err != nil {
				t.Fatalf("Device = %q, %v", got, err)
			}
			for i := 0; i < 2; i++ {
				if err := n.Detach(ctx, id); err != nil {
					t.Fatalf("Detach #%d: %v", i+1, err)
				}
			}
			if got, err := n.Device(ctx, id); got != "" || err != nil {
				t.Fatalf("Device after Detach = %q, %v", got, err)
			}
			list := "rbd " + conn + " device list -t " + mode + " --format json"
			want := []string{
				list,
				"rbd " + conn + " device map -t " + mode + " " + id,
				list, list,
				list, "rbd " + conn + " device unmap -t " + mode + " " + dev,
				list, list,
			}
			if got := run.commands(); strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			// Ids of other clusters or images are never mapped.
			if _, err := n.Attach(ctx, &backend.Volume{ID: "rbd/someone-elses"}, nil); csierr.Code(err) != codes.NotFound {
				t.Fatalf("foreign id: %v", err)
			}
			if err := n.Detach(ctx, "rbd/someone-elses"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A map the kernel refuses (no module) says why; an unmap of a busy device
// is FailedPrecondition.
func TestMapperErrors(t *testing.T) {
	ctx := context.Background()
	run := &fakeRunner{answers: map[string]func([]string) ([]byte, error){
		"device list": func([]string) ([]byte, error) {
			return []byte(`[{"id":"0","pool":"rbd","namespace":"","name":"` + (names{"test"}).volumeImage(nameHash("busy")) + `","snap":"-","device":"/dev/rbd0"}]`), nil
		},
		"device map": func([]string) ([]byte, error) {
			return nil, exitErr(2, "rbd: failed to load rbd kernel module (1)\nrbd: map failed: (2) No such file or directory\n")
		},
		"device unmap": func([]string) ([]byte, error) {
			return nil, exitErr(16, "rbd: sysfs write failed\nrbd: unmap failed: (16) Device or resource busy\n")
		},
	}}
	b := newAttachBackend(t, run)
	n, _ := b.ForNode("node-1", ModeKRBD)
	_, err := n.Attach(ctx, &backend.Volume{ID: "rbd/" + b.names.volumeImage(nameHash("new"))}, nil)
	if err == nil || !strings.Contains(err.Error(), "map failed") || !strings.Contains(err.Error(), "krbd") {
		t.Fatalf("map without the module: %v", err)
	}
	err = n.Detach(ctx, "rbd/"+b.names.volumeImage(nameHash("busy")))
	if csierr.Code(err) != codes.FailedPrecondition {
		t.Fatalf("busy unmap: %v", err)
	}
	if _, err := b.ForNode("node-1", "iscsi"); err == nil {
		t.Fatal("unknown attach mode accepted")
	}
}
