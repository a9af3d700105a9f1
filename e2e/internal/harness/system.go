package harness

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/swarm-csi/swarm-csi/pkg/mountinfo"
)

// Mount is one line of a mountinfo file.
type Mount struct {
	MajorMinor string // "7:3"
	Root       string
	MountPoint string
	FSType     string
	Source     string
}

// ReadMountinfo parses /proc/self/mountinfo or /proc/PID/mountinfo.
func ReadMountinfo(path string) ([]Mount, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseMountinfo(b), nil
}

func parseMountinfo(b []byte) []Mount {
	var ms []Mount
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			continue
		}
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+2 >= len(f) {
			continue
		}
		ms = append(ms, Mount{
			MajorMinor: f[2],
			Root:       mountinfo.Unescape(f[3]),
			MountPoint: mountinfo.Unescape(f[4]),
			FSType:     f[sep+1],
			Source:     mountinfo.Unescape(f[sep+2]),
		})
	}
	return ms
}

// under reports whether p is dir or inside it.
func under(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// Loop is an attached loop device.
type Loop struct {
	Dev         string // /dev/loopN
	MajorMinor  string // 7:N
	BackingFile string // /sys/block/loopN/loop/backing_file
	FileName    string // lo_file_name: the driver's tag "<volume-id>@<node-tag>"
	Device      uint64 // st_dev of the backing file
	Inode       uint64 // its inode
}

// ListLoops returns every attached loop device.
func ListLoops() ([]Loop, error) {
	entries, err := os.ReadDir("/sys/block")
	if err != nil {
		return nil, err
	}
	var loops []Loop
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "loop") {
			continue
		}
		bf, err := os.ReadFile(filepath.Join("/sys/block", name, "loop", "backing_file"))
		if err != nil {
			continue // not attached
		}
		l := Loop{Dev: "/dev/" + name, BackingFile: strings.TrimSpace(string(bf))}
		if mm, err := os.ReadFile(filepath.Join("/sys/block", name, "dev")); err == nil {
			l.MajorMinor = strings.TrimSpace(string(mm))
		}
		if fd, err := unix.Open(l.Dev, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
			if st, err := unix.IoctlLoopGetStatus64(fd); err == nil {
				l.Device, l.Inode = st.Device, st.Inode
				l.FileName = cString(st.File_name[:])
			}
			unix.Close(fd)
		}
		loops = append(loops, l)
	}
	return loops, nil
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// FileID is a file's device and inode, how a loop device names its file.
type FileID struct{ Dev, Ino uint64 }

// IDOf returns path's FileID.
func IDOf(path string) (FileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return FileID{}, err
	}
	return FileID{Dev: st.Dev, Ino: st.Ino}, nil
}

// LoopsBacking returns the loop devices whose backing file is path.
func LoopsBacking(path string) ([]Loop, error) {
	id, err := IDOf(path)
	if err != nil {
		return nil, err
	}
	loops, err := ListLoops()
	if err != nil {
		return nil, err
	}
	var out []Loop
	for _, l := range loops {
		if l.Device == id.Dev && l.Inode == id.Ino {
			out = append(out, l)
		}
	}
	return out, nil
}

// filesUnder returns the FileIDs of the regular files under dirs.
func filesUnder(dirs []string) map[FileID]string {
	ids := map[FileID]string{}
	for _, d := range dirs {
		filepath.Walk(d, func(p string, fi os.FileInfo, err error) error {
			if err != nil || !fi.Mode().IsRegular() {
				return nil
			}
			if st, ok := fi.Sys().(*unix.Stat_t); ok {
				ids[FileID{Dev: st.Dev, Ino: st.Ino}] = p
			} else if id, err := IDOf(p); err == nil {
				ids[id] = p
			}
			return nil
		})
	}
	return ids
}

// ProcInfo is a process as /proc shows it.
type ProcInfo struct {
	Pid, PPid int
	Comm      string
	Cmdline   string
	State     string // R, S, D (uninterruptible: waiting on the kernel), Z...
}

// ListProcs returns every process.
func ListProcs() []ProcInfo {
	entries, _ := os.ReadDir("/proc")
	var ps []ProcInfo
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(stat)
		open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closing < open {
			continue
		}
		f := strings.Fields(s[closing+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		ps = append(ps, ProcInfo{Pid: pid, PPid: ppid, Comm: s[open+1 : closing], State: f[0],
			Cmdline: strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))})
	}
	return ps
}

// descendants returns the processes below any of roots (roots included).
func descendants(ps []ProcInfo, roots map[int]bool) map[int]ProcInfo {
	out := map[int]ProcInfo{}
	byPid := map[int]ProcInfo{}
	for _, p := range ps {
		byPid[p.Pid] = p
	}
	for _, p := range ps {
		for q, depth := p, 0; depth < 64; depth++ {
			if roots[q.Pid] {
				out[p.Pid] = p
				break
			}
			parent, ok := byPid[q.PPid]
			if !ok || q.PPid <= 1 {
				break
			}
			q = parent
		}
	}
	return out
}

// RSS returns a process's resident set size in bytes.
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb * 1024, err
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}
