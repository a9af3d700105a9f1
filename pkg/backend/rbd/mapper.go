package rbd

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
)

// mapper attaches images as /dev/rbdN (krbd) or /dev/nbdN (nbd) with
// `rbd device`, and finds them with `rbd device list`, which reads what the
// kernel (or the rbd-nbd processes) have mapped: no state of its own.
type mapper struct {
	b    *Backend
	kind string // ModeKRBD or ModeNBD: rbd device -t
}

func (m *mapper) tools() []string {
	if m.kind == ModeNBD {
		return []string{"rbd", "rbd-nbd"}
	}
	return []string{"rbd"}
}

type mapping struct {
	Pool      string `json:"pool"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`  // krbd
	Image     string `json:"image"` // nbd
	Snap      string `json:"snap"`
	Device    string `json:"device"`
}

func (m *mapper) device(ctx context.Context, ref imageRef, _ string) (string, error) {
	var maps []mapping
	if err := m.b.cli.rbdJSON(ctx, m.b.creds, "", &maps, "device", "list", "-t", m.kind); err != nil {
		return "", err
	}
	for _, mp := range maps {
		name := mp.Name
		if name == "" {
			name = mp.Image
		}
		if mp.Pool == ref.pool && mp.Namespace == "" && name == ref.image && (mp.Snap == "" || mp.Snap == "-") {
			if !strings.HasPrefix(mp.Device, "/dev/") {
				return "", fmt.Errorf("rbd device list: %s is mapped at %q, not a device", ref, mp.Device)
			}
			return mp.Device, nil
		}
	}
	return "", nil
}

// attach maps the image. A mapped image follows its resizes by itself
// (the kernel and rbd-nbd watch its header), so a mapped one is returned
// as it is.
func (m *mapper) attach(ctx context.Context, cr creds, ref imageRef, hash string, _ *backend.Volume) (string, error) {
	dev, err := m.device(ctx, ref, hash)
	if err != nil || dev != "" {
		return dev, err
	}
	out, err := m.b.cli.rbd(ctx, cr, ref.String(), "device", "map", "-t", m.kind, ref.String())
	if err != nil {
		return "", fmt.Errorf("map %s with %s: %w", ref, m.kind, err)
	}
	dev = strings.TrimSpace(string(out))
	if !strings.HasPrefix(dev, "/dev/") {
		return "", fmt.Errorf("rbd device map %s printed %q, not a device", ref, dev)
	}
	return dev, nil
}

func (m *mapper) detach(ctx context.Context, ref imageRef, hash string) error {
	dev, err := m.device(ctx, ref, hash)
	if err != nil || dev == "" {
		return err
	}
	_, err = m.b.cli.rbd(ctx, m.b.creds, ref.String(), "device", "unmap", "-t", m.kind, dev)
	if err != nil && !errors.Is(err, KindNotFound) && !errors.Is(err, KindInvalid) {
		return fmt.Errorf("unmap %s (%s): %w", ref, dev, err)
	}
	return nil
}
