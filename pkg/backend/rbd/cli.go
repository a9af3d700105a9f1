package rbd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/swarm-csi/swarm-csi/pkg/csierr"
	"github.com/swarm-csi/swarm-csi/pkg/metrics"
)

// Runner runs a command and returns its standard output. A command that
// fails returns a *ExitError; one that the context stops returns the
// context's error.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// ExitError is a command that ran and failed.
type ExitError struct {
	Code   int
	Stderr string
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("exit status %d: %s", e.Code, lastLine(e.Stderr))
}

// ExecRunner runs commands as processes. Keys never reach a command line:
// the tools read them from keyring files.
type ExecRunner struct{}

// Run implements Runner.
func (ExecRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// The tools exit by themselves on their own timeouts (see the
	// configuration file); a kill is the last resort.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return nil, &ExitError{Code: ee.ExitCode(), Stderr: stderr.String()}
	}
	if err != nil {
		return nil, err
	}
	return stdout.Bytes(), nil
}

// Kind is the class of a failed Ceph command that callers act on.
type Kind int

// The kinds of failure. Each maps to the gRPC code the CSI spec names.
const (
	KindOther Kind = iota
	KindNotFound
	KindExists
	KindBusy        // watchers, a lock, or snapshots with clones
	KindTimeout     // the command or its connection timed out
	KindUnreachable // no monitor answered
	KindAuth        // cephx refused the key
	KindDenied      // the user's capabilities do not allow it
	KindNoSpace
	KindInvalid
)

var kindNames = map[Kind]string{
	KindOther: "failed", KindNotFound: "not found", KindExists: "exists", KindBusy: "busy",
	KindTimeout: "timed out", KindUnreachable: "Ceph unreachable", KindAuth: "cephx authentication failed",
	KindDenied: "permission denied", KindNoSpace: "no space", KindInvalid: "invalid argument",
}

// Error is a failed rbd or ceph command. It matches errors.Is(err, kind)
// for its kind, and unwraps to the csierr sentinel of the kind.
type Error struct {
	Kind Kind
	// Cmd is the tool and its subcommand ("rbd snap create") and the
	// object it acted on; never a key.
	Cmd string
	// Msg is what the tool said, its last line of error output.
	Msg string
}

func (k Kind) Error() string { return kindNames[k] }

func (e *Error) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("%s: %s", e.Cmd, e.Kind)
	}
	return fmt.Sprintf("%s: %s", e.Cmd, e.Msg)
}

// Is matches the error's kind.
func (e *Error) Is(target error) bool {
	k, ok := target.(Kind)
	return ok && k == e.Kind
}

// Unwrap gives the csierr sentinel, and so the gRPC code.
func (e *Error) Unwrap() error {
	switch e.Kind {
	case KindNotFound:
		return csierr.ErrNotFound
	case KindExists:
		return csierr.ErrAlreadyExists
	case KindBusy:
		return csierr.ErrInUse
	case KindTimeout:
		return context.DeadlineExceeded
	case KindUnreachable:
		return csierr.ErrUnavailable
	case KindAuth:
		return csierr.ErrUnauthenticated
	case KindDenied:
		return csierr.ErrPermissionDenied
	case KindNoSpace:
		return csierr.ErrResourceExhausted
	case KindInvalid:
		return csierr.ErrInvalid
	}
	return nil
}

// classify turns a command's failure into an *Error. The tools exit with
// the errno of what failed, and say it on their last line.
func classify(cmd string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Kind: KindTimeout, Cmd: cmd, Msg: "no answer within the time allowed"}
	}
	var ee *ExitError
	if !errors.As(err, &ee) {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	msg := lastLine(ee.Stderr)
	e := &Error{Kind: kindOf(syscall.Errno(ee.Code)), Cmd: cmd, Msg: msg}
	noCluster := strings.Contains(ee.Stderr, "couldn't connect to the cluster") ||
		strings.Contains(ee.Stderr, "failed to fetch mon config")
	switch {
	case !noCluster:
	case e.Kind == KindTimeout:
		e.Kind = KindUnreachable
		e.Msg = "no Ceph monitor answered: " + msg
	case e.Kind == KindDenied:
		e.Kind = KindAuth
		e.Msg = "the monitors refused the cephx key: " + msg
	case e.Kind == KindOther:
		e.Kind = KindUnreachable
	}
	return e
}

// kindOf is the kind of failure an errno names, whether a tool exited with
// it or librados or librbd answered it.
func kindOf(errno syscall.Errno) Kind {
	switch errno {
	case syscall.ENOENT:
		return KindNotFound
	case syscall.EEXIST:
		return KindExists
	case syscall.EBUSY, syscall.ENOTEMPTY:
		return KindBusy
	case syscall.ETIMEDOUT:
		return KindTimeout
	case syscall.EACCES, syscall.EPERM:
		return KindDenied
	case syscall.ENOSPC, syscall.EDQUOT:
		return KindNoSpace
	case syscall.EINVAL, syscall.ERANGE:
		return KindInvalid
	}
	return KindOther
}

// lastLine returns the last line of a tool's error output that is not a
// log line of the Ceph libraries (which start with a timestamp).
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l != "" && !(len(l) > 4 && l[4] == '-' && l[0] >= '0' && l[0] <= '9') {
			return l
		}
	}
	if len(lines) > 0 {
		return strings.TrimSpace(lines[len(lines)-1])
	}
	return ""
}

// cli runs the attach tools (rbd device map/unmap/list) against one
// cluster, each call with its own timeout.
type cli struct {
	run     Runner
	conf    string // ceph.conf: monitors and client settings
	timeout time.Duration
}

// creds is the cephx identity of a call: the user and its keyring file.
type creds struct {
	user, keyring string
}

// rbd runs `rbd ARGS...` as c and returns its output. what names the
// object acted on, for the error message.
func (c *cli) rbd(ctx context.Context, cr creds, what string, args ...string) ([]byte, error) {
	return c.tool(ctx, "rbd", cr, what, args...)
}

func (c *cli) tool(ctx context.Context, tool string, cr creds, what string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	full := append([]string{"-c", c.conf, "--id", cr.user, "--keyring", cr.keyring}, args...)
	start := time.Now()
	out, err := c.run.Run(ctx, tool, full...)
	if err != nil {
		err = classify(describe(tool, args, what), err)
	}
	metrics.BackendCall("rbd", describe(tool, args, ""), outcome(err), time.Since(start))
	return out, err
}

// outcome names a command's result for the metrics: ok, or its kind.
func outcome(err error) string {
	var e *Error
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &e):
		return e.Kind.Error()
	}
	return "error"
}

// describe names a command for messages: the tool, its subcommand words
// and the object, without options or values.
func describe(tool string, args []string, what string) string {
	words := []string{tool}
	for _, a := range args {
		if strings.HasPrefix(a, "-") || len(words) == 3 {
			break
		}
		words = append(words, a)
	}
	if what != "" {
		words = append(words, what)
	}
	return strings.Join(words, " ")
}

// rbdJSON runs an rbd command with --format json and decodes its output.
func (c *cli) rbdJSON(ctx context.Context, cr creds, what string, v any, args ...string) error {
	out, err := c.rbd(ctx, cr, what, append(args, "--format", "json")...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("%s: unexpected output: %w", describe("rbd", args, what), err)
	}
	return nil
}
