package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// mkfsArgs is the command line the driver's formatter uses.
func mkfsArgs(fs, dev string) []string {
	if fs == "xfs" {
		return []string{"mkfs.xfs", "-f", dev}
	}
	return []string{"mkfs.ext4", "-F", "-m0", dev}
}

// rawLifecycle is one volume done by hand, one exec'd command per step.
func (b *bench) rawLifecycle(name, fs string, size int64) *lifecycle {
	if b.ceph != nil {
		return b.rawRBDLifecycle(name, fs, size)
	}
	file := filepath.Join(b.dir, "raw", name+".img")
	dir := b.rawMount(name)
	return &lifecycle{
		name: "raw volume " + name,
		dirs: []string{dir},
		setup: append([]step{{
			name: "truncate",
			do:   command("truncate", "-s", strconv.FormatInt(size, 10), file),
			undo: &step{name: "rm", do: command("rm", file)},
		}}, fileSteps(file, dir, fs)...),
	}
}

// rawMount is where rawLifecycle mounts the volume name.
func (b *bench) rawMount(name string) string { return filepath.Join(b.dir, "mnt", "raw-"+name) }

// fileSteps attach an image file to a loop device, format it and mount it
// on dir.
func fileSteps(file, dir, fs string) []step {
	var dev string
	return []step{{
		name: "losetup",
		do: func(ctx context.Context) error {
			out, err := execute(ctx, "losetup", "--find", "--show", file)
			dev = strings.TrimSpace(out)
			return err
		},
		undo: &step{name: "losetup -d", do: func(ctx context.Context) error {
			_, err := execute(ctx, "losetup", "-d", dev)
			return err
		}},
	}, {
		name: "mkfs." + fs,
		do: func(ctx context.Context) error {
			_, err := execute(ctx, mkfsArgs(fs, dev)...)
			return err
		},
	}, {
		name: "mount",
		do: func(ctx context.Context) error {
			_, err := execute(ctx, "mount", dev, dir)
			return err
		},
		undo: &step{name: "umount", do: command("umount", dir)},
	}}
}

func command(args ...string) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := execute(ctx, args...)
		return err
	}
}

// execute runs a command in its own process group (so Ctrl-C does not kill
// it half-way) and returns its stdout.
func execute(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}
