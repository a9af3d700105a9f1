// Package csierr is the one place where the driver's errors become gRPC
// status codes. Handlers and backends return plain Go errors wrapping the
// sentinels below; the server's interceptor converts them with Status.
package csierr

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinel errors. Wrap them with fmt.Errorf("%w: ...") to add context.
var (
	ErrInvalid            = errors.New("invalid argument")
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrInUse              = errors.New("in use")
	ErrOutOfRange         = errors.New("out of range")
	ErrResourceExhausted  = errors.New("resource exhausted")
	ErrAborted            = errors.New("operation in progress")
	ErrUnimplemented      = errors.New("not supported")
	ErrUnavailable        = errors.New("unavailable")
	// ErrUnauthenticated and ErrPermissionDenied are a storage API's
	// refusal of the driver's credentials, or of what they may do.
	ErrUnauthenticated  = errors.New("unauthenticated")
	ErrPermissionDenied = errors.New("permission denied")
)

var codeFor = []struct {
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

// Code returns the gRPC code for err: the code of an existing status, of the
// first sentinel it wraps, or Internal.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	for _, c := range codeFor {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return codes.Internal
}

// Status converts err into a gRPC status error, keeping its message.
func Status(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(Code(err), err.Error())
}

// Invalid returns an InvalidArgument error with a formatted message.
func Invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// NotFound returns a NotFound error with a formatted message.
func NotFound(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrNotFound, fmt.Sprintf(format, args...))
}

// Precondition returns a FailedPrecondition error with a formatted message.
func Precondition(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFailedPrecondition, fmt.Sprintf(format, args...))
}
