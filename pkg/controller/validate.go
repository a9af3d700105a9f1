package controller

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/swarm-csi/swarm-csi/pkg/backend"
	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/volcap"
)

// Parameters every backend accepts in CreateVolume.
const (
	paramFsType      = "fsType"
	paramMkfsOptions = "mkfsOptions"
	// paramMountOptions are mount options applied at every stage.
	paramMountOptions = "mountOptions"
	// paramCloneFrom and paramFromSnapshot make the volume a copy: Swarm
	// sends no content source, so `docker volume create --opt` carries it.
	paramCloneFrom    = "cloneFrom"
	paramFromSnapshot = "fromSnapshot"
)

// splitParameters checks the parameter names and separates the common ones
// from the backend's own.
func (s *Server) splitParameters(params map[string]string) (fsType, mkfs, mountOpts string, rest map[string]string, err error) {
	allowed := append([]string{paramFsType, paramMkfsOptions, paramMountOptions, paramCloneFrom, paramFromSnapshot}, rootParams...)
	allowed = append(allowed, s.info.Parameters...)
	for k := range params {
		if !slices.Contains(allowed, k) {
			return "", "", "", nil, csierr.Invalid("parameter %q is not supported; the %s backend accepts: %s",
				k, s.info.Name, strings.Join(allowed, ", "))
		}
	}
	rest = maps.Clone(params)
	delete(rest, paramFsType)
	delete(rest, paramMkfsOptions)
	delete(rest, paramMountOptions)
	delete(rest, paramCloneFrom)
	delete(rest, paramFromSnapshot)
	for _, k := range rootParams {
		delete(rest, k)
	}
	if len(rest) == 0 {
		rest = nil
	}
	if _, err := volcap.SplitMkfsOptions(params[paramMkfsOptions]); err != nil {
		return "", "", "", nil, err
	}
	if _, err := volcap.SplitMountOptions(params[paramMountOptions]); err != nil {
		return "", "", "", nil, err
	}
	if s.info.SharedFilesystem && (params[paramFsType] != "" || params[paramMkfsOptions] != "" || params[paramMountOptions] != "") {
		return "", "", "", nil, csierr.Invalid("parameters %s, %s and %s do not apply: a %s volume is a directory of the shared filesystem",
			paramFsType, paramMkfsOptions, paramMountOptions, s.info.Name)
	}
	return params[paramFsType], params[paramMkfsOptions], params[paramMountOptions], rest, nil
}

// accessOf checks a CreateVolume's capabilities: they must agree on the
// access type, and on the filesystem with each other and with fsType.
func (s *Server) accessOf(caps []*csi.VolumeCapability, fsType string) (block bool, fs string, mode volcap.Mode, err error) {
	if err := volcap.CheckAll(caps, s.info.SharedFilesystem); err != nil {
		return false, "", 0, err
	}
	if s.info.SharedFilesystem {
		return false, "", caps[0].GetAccessMode().GetMode(), s.checkDirectory(caps)
	}
	block = volcap.IsBlock(caps[0])
	fs = fsType
	for _, c := range caps {
		if volcap.IsBlock(c) != block {
			return false, "", 0, csierr.Invalid("volume capabilities mix block and mount access")
		}
		if f := c.GetMount().GetFsType(); f != "" {
			if fs != "" && fs != f {
				return false, "", 0, csierr.Invalid("fsType %q conflicts with capability fs_type %q", fs, f)
			}
			fs = f
		}
	}
	if err := volcap.CheckFsType(fs); err != nil {
		return false, "", 0, err
	}
	if block {
		fs = ""
	} else if fs == "" {
		fs = volcap.DefaultFsType
	}
	return block, fs, caps[0].GetAccessMode().GetMode(), nil
}

// checkDirectory refuses what a volume that is a directory of a shared
// filesystem cannot be: a block device, or a filesystem of a given type.
func (s *Server) checkDirectory(caps []*csi.VolumeCapability) error {
	for _, c := range caps {
		if volcap.IsBlock(c) {
			return csierr.Invalid("block access is not supported: a %s volume is a directory of the shared filesystem; use mount access (Swarm: --type mount)", s.info.Name)
		}
		if f := c.GetMount().GetFsType(); f != "" {
			return csierr.Invalid("fs_type %q does not apply: a %s volume is a directory of the shared filesystem", f, s.info.Name)
		}
	}
	return nil
}

// sizeFor picks a volume size for a capacity range: required bytes rounded
// up to the backend's granularity and at least min, within limit. No range
// gets the backend's default size.
func (s *Server) sizeFor(r *csi.CapacityRange, min int64) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, csierr.Invalid("capacity range must not be negative")
	}
	if lim > 0 && req > lim {
		return 0, csierr.Invalid("required_bytes %d exceeds limit_bytes %d", req, lim)
	}
	g := s.info.Granularity
	size := req
	if size == 0 {
		size = s.info.DefaultSize
		if lim > 0 && size > lim {
			size = lim / g * g
		}
	}
	size = max(size, min, s.info.MinSize)
	size = (size + g - 1) / g * g
	if lim > 0 && size > lim {
		return 0, fmt.Errorf("%w: the smallest volume that fits is %d bytes, above limit_bytes %d", csierr.ErrOutOfRange, size, lim)
	}
	if s.info.MaxSize > 0 && size > s.info.MaxSize {
		return 0, fmt.Errorf("%w: %d bytes asked for; the largest %s volume is %d bytes", csierr.ErrOutOfRange, size, s.info.Name, s.info.MaxSize)
	}
	return size, nil
}

// checkSingleNode refuses the multi-node access modes when the backend
// attaches a volume to one node at a time.
func (s *Server) checkSingleNode(m volcap.Mode) error {
	if !s.info.SingleNodeOnly || volcap.SingleNode(m) {
		return nil
	}
	return csierr.Invalid("access mode %v shares the volume between nodes, but a %s volume attaches to one node at a time: use a SINGLE_NODE mode (Swarm: --scope single)", m, s.info.Name)
}

// fits reports whether size satisfies a capacity range.
func fits(size int64, r *csi.CapacityRange) bool {
	return size >= r.GetRequiredBytes() && (r.GetLimitBytes() == 0 || size <= r.GetLimitBytes())
}

// sameVolume explains how an existing volume differs from a new request
// for the same name, or returns "" when the request is a retry.
func sameVolume(v *backend.Volume, want backend.VolumeSpec, r *csi.CapacityRange) string {
	switch {
	case !fits(v.CapacityBytes, r):
		return fmt.Sprintf("its size %d bytes does not fit the requested range", v.CapacityBytes)
	case v.Block != want.Block:
		return "its access type differs"
	case v.FsType != want.FsType:
		return fmt.Sprintf("its fsType is %q", v.FsType)
	case v.MkfsOptions != want.MkfsOptions:
		return fmt.Sprintf("its mkfsOptions are %q", v.MkfsOptions)
	case v.MountOptions != want.MountOptions:
		return fmt.Sprintf("its mountOptions are %q", v.MountOptions)
	case v.AccessMode != want.AccessMode:
		return fmt.Sprintf("its access mode is %s", v.AccessMode)
	case !maps.Equal(v.Parameters, want.Parameters):
		return "its parameters differ"
	case derefSource(v.Source) != derefSource(want.Source):
		return "its content source differs"
	case derefRoot(v.Root) != derefRoot(want.Root):
		return "its uid, gid or mode differ"
	}
	return ""
}

func derefSource(s *backend.Source) backend.Source {
	if s == nil {
		return backend.Source{}
	}
	return *s
}

var rootParams = []string{backend.ParamUID, backend.ParamGID, backend.ParamMode}

// rootDir reads the uid, gid and mode parameters: they apply to a new,
// empty volume that is a filesystem or a directory. A block volume has no
// root directory, and a copy keeps its source's owner and mode.
func rootDir(params map[string]string, block, hasSource bool) (*backend.RootDir, error) {
	r, err := backend.ParseRootDir(params)
	if err != nil {
		return nil, err
	}
	has := func(k string) bool { _, ok := params[k]; return ok }
	switch {
	case !slices.ContainsFunc(rootParams, has):
		return nil, nil
	case block:
		return nil, csierr.Invalid("parameters uid, gid and mode apply to a filesystem: a block volume has none")
	case hasSource || has(paramCloneFrom) || has(paramFromSnapshot):
		return nil, csierr.Invalid("parameters uid, gid and mode do not apply to a copy: it keeps the owner and mode of its source")
	}
	return r, nil
}

func derefRoot(r *backend.RootDir) backend.RootDir {
	if r == nil {
		return backend.FreshRoot
	}
	return *r
}

// pageToken encodes where the next page of a listing starts: after the id.
const tokenPrefix = "after:"

func pageStart(token string) (string, error) {
	if token == "" {
		return "", nil
	}
	after, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok || after == "" {
		return "", fmt.Errorf("%w: starting_token %q was not issued by this driver", csierr.ErrAborted, token)
	}
	return after, nil
}

// pageArgs checks a page's arguments and returns the id the page starts
// after.
func pageArgs(token string, maxEntries int32) (string, error) {
	if maxEntries < 0 {
		return "", csierr.Invalid("max_entries must not be negative")
	}
	return pageStart(token)
}

// nextToken is the token of the page after items, "" when none follows.
func nextToken[T any](items []T, more bool, id func(T) string) string {
	if !more || len(items) == 0 {
		return ""
	}
	return tokenPrefix + id(items[len(items)-1])
}

// page returns the items after token, at most maxEntries of them (0: all),
// and the token of the next page. items are sorted by id.
func page[T any](items []T, id func(T) string, token string, maxEntries int32) ([]T, string, error) {
	after, err := pageArgs(token, maxEntries)
	if err != nil {
		return nil, "", err
	}
	start := 0
	if after != "" {
		// The entry named by the token may be gone: start after its place.
		start = sort.Search(len(items), func(i int) bool { return id(items[i]) > after })
	}
	items = items[start:]
	more := maxEntries > 0 && int(maxEntries) < len(items)
	if more {
		items = items[:maxEntries]
	}
	return items, nextToken(items, more, id), nil
}
