package csierr

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var sentinels = []struct {
	err  error
	code codes.Code
}{
	{ErrInvalid, codes.InvalidArgument},
	{ErrNotFound, codes.NotFound},
	{ErrAlreadyExists, codes.AlreadyExists},
	{ErrFailedPrecondition, codes.FailedPrecondition},
	{ErrInUse, codes.FailedPrecondition},
	{ErrOutOfRange, codes.OutOfRange},
	{ErrResourceExhausted, codes.ResourceExhausted},
	{ErrAborted, codes.Aborted},
	{ErrUnimplemented, codes.Unimplemented},
	{ErrUnavailable, codes.Unavailable},
	{ErrUnauthenticated, codes.Unauthenticated},
	{ErrPermissionDenied, codes.PermissionDenied},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
}

func TestCodeOfSentinels(t *testing.T) {
	for _, s := range sentinels {
		t.Run(s.code.String()+"/"+s.err.Error(), func(t *testing.T) {
			wrapped := fmt.Errorf("volume vol-1: %w", s.err)
			twice := fmt.Errorf("backend: %w", wrapped)
			joined := errors.Join(errors.New("cleanup failed"), wrapped)
			for name, err := range map[string]error{"bare": s.err, "wrapped": wrapped, "wrapped twice": twice, "joined": joined} {
				if got := Code(err); got != s.code {
					t.Errorf("%s: Code = %v, want %v", name, got, s.code)
				}
				st, ok := status.FromError(Status(err))
				if !ok || st.Code() != s.code || st.Message() != err.Error() {
					t.Errorf("%s: Status = %v (ok %t), want code %v and message %q", name, st, ok, s.code, err.Error())
				}
			}
		})
	}
}

func TestSentinelsDistinct(t *testing.T) {
	// Every sentinel but ErrInUse (a FailedPrecondition with its own
	// meaning) has a code of its own, so none shadows another.
	seen := map[codes.Code]error{}
	for _, s := range sentinels {
		if s.err == ErrInUse {
			continue
		}
		if prev, ok := seen[s.code]; ok {
			t.Errorf("%v and %v share code %v", prev, s.err, s.code)
		}
		seen[s.code] = s.err
	}
}

func TestCodeOfOtherErrors(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want codes.Code
	}{
		{"nil", nil, codes.OK},
		{"plain error", errors.New("disk on fire"), codes.Internal},
		{"wrapped plain error", fmt.Errorf("x: %w", errors.New("y")), codes.Internal},
		{"status error", status.Error(codes.Unauthenticated, "who are you"), codes.Unauthenticated},
		{"status error wrapped", fmt.Errorf("call: %w", status.Error(codes.PermissionDenied, "no")), codes.PermissionDenied},
		// A status says what it means, whatever it wraps.
		{"status beats sentinel text", status.Error(codes.Unavailable, ErrNotFound.Error()), codes.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Code(tt.err); got != tt.want {
				t.Fatalf("Code(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestStatus(t *testing.T) {
	if Status(nil) != nil {
		t.Fatal("Status(nil) is not nil")
	}
	orig := status.Error(codes.ResourceExhausted, "full")
	if got := Status(orig); got != orig {
		t.Fatalf("a status error was replaced: %v", got)
	}
	st := status.Convert(Status(errors.New("boom")))
	if st.Code() != codes.Internal || st.Message() != "boom" {
		t.Fatalf("plain error became %v", st)
	}
}

func TestHelpers(t *testing.T) {
	tests := []struct {
		err      error
		sentinel error
		code     codes.Code
		msg      string
	}{
		{Invalid("size %d too small", 3), ErrInvalid, codes.InvalidArgument, "invalid argument: size 3 too small"},
		{NotFound("volume %q", "v"), ErrNotFound, codes.NotFound, `not found: volume "v"`},
		{Precondition("published to %s", "n1"), ErrFailedPrecondition, codes.FailedPrecondition, "failed precondition: published to n1"},
		// A literal % in an argument is not reinterpreted.
		{Invalid("%s", "100%d"), ErrInvalid, codes.InvalidArgument, "invalid argument: 100%d"},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, tt.sentinel) || Code(tt.err) != tt.code || tt.err.Error() != tt.msg {
			t.Errorf("%q: is %v %t, code %v; want %v, %q", tt.err, tt.sentinel, errors.Is(tt.err, tt.sentinel), Code(tt.err), tt.code, tt.msg)
		}
	}
}
