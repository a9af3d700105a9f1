package hcloud

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// codeSentinels maps the API's error codes to the driver's errors.
var codeSentinels = map[hcloud.ErrorCode]error{
	hcloud.ErrorCodeNotFound:              csierr.ErrNotFound,
	hcloud.ErrorCodeInvalidInput:          csierr.ErrInvalid,
	hcloud.ErrorCodeJSONError:             csierr.ErrInvalid,
	hcloud.ErrorCodeUnauthorized:          csierr.ErrUnauthenticated,
	hcloud.ErrorCodeForbidden:             csierr.ErrPermissionDenied,
	hcloud.ErrorCodeLocked:                csierr.ErrAborted,
	hcloud.ErrorCodeConflict:              csierr.ErrAborted,
	hcloud.ErrorCodeUniquenessError:       csierr.ErrAlreadyExists,
	hcloud.ErrorCodeProtected:             csierr.ErrFailedPrecondition,
	hcloud.ErrorCodeVolumeAlreadyAttached: csierr.ErrFailedPrecondition,
	hcloud.ErrorCodeResourceLimitExceeded: csierr.ErrResourceExhausted,
	hcloud.ErrorCodeNoSpaceLeftInLocation: csierr.ErrResourceExhausted,
	errorCodeAttachLimit:                  csierr.ErrResourceExhausted,
	// Rate limiting is transient: the same call succeeds later. It is
	// not ResourceExhausted, which CSI gives to limits a retry does not
	// lift (volumes per node, capacity in a topology).
	hcloud.ErrorCodeRateLimitExceeded:   csierr.ErrUnavailable,
	hcloud.ErrorCodeServiceError:        csierr.ErrUnavailable,
	hcloud.ErrorCodeServerError:         csierr.ErrUnavailable,
	hcloud.ErrorCodeMaintenance:         csierr.ErrUnavailable,
	hcloud.ErrorCodeResourceUnavailable: csierr.ErrUnavailable,
	hcloud.ErrorCodeBadGateway:          csierr.ErrUnavailable,
	hcloud.ErrorCodeTimeout:             csierr.ErrUnavailable,
	hcloud.ErrorCodeRobotUnavailable:    csierr.ErrUnavailable,
	"unavailable":                       csierr.ErrUnavailable,
}

// errorCodeAttachLimit is what the API answers an attach to a server that
// has all the volumes it takes (the code Hetzner's own CSI driver checks).
const errorCodeAttachLimit hcloud.ErrorCode = "limit_exceeded_error"

// fail turns an error of the call into one wrapping the csierr sentinel
// for its gRPC code, saying what was being done.
func (o *op) fail(err error, what string) error {
	if err == nil {
		return nil
	}
	if perr := o.parent.Err(); perr != nil {
		return fmt.Errorf("%s: %w", what, perr)
	}
	if o.ctx.Err() != nil {
		// The budget is spent, not the caller's deadline. Aborted is the
		// code CSI gives to "an operation is pending for this volume":
		// the action goes on in the cloud, and the retry, which Swarm
		// makes with backoff, finds it running and waits for it.
		return fmt.Errorf("%w: %s is still in progress after %s (Hetzner Cloud runs one action at a time on a volume or server, and this one is running or waiting its turn); a retry waits for it to finish",
			csierr.ErrAborted, what, o.b.cfg.Wait)
	}
	return apiError(err, what)
}

// apiError maps an API client error.
func apiError(err error, what string) error {
	var ae hcloud.ActionError
	if errors.As(err, &ae) {
		sentinel := codeSentinels[hcloud.ErrorCode(ae.Code)]
		if sentinel == nil {
			sentinel = errors.New("action failed")
		}
		return fmt.Errorf("%w: %s failed in Hetzner Cloud: %s (%s)", sentinel, what, ae.Message, ae.Code)
	}
	var spent *errBudgetSpent
	if errors.As(err, &spent) {
		return fmt.Errorf("%w: %s: %v", csierr.ErrUnavailable, what, spent)
	}
	var he hcloud.Error
	if errors.As(err, &he) {
		sentinel := codeSentinels[he.Code]
		if sentinel == nil {
			sentinel = fmt.Errorf("unexpected API error")
		}
		msg := fmt.Sprintf("%s: the Hetzner Cloud API answered: %s (%s)", what, he.Message, he.Code)
		if he.Code == hcloud.ErrorCodeRateLimitExceeded {
			msg += "; " + retryAfter(he.Response())
		}
		return fmt.Errorf("%w: %s", sentinel, msg)
	}
	if errors.Is(err, hcloud.ErrStatusCode) {
		// An answer without an API error body, from a proxy or gateway.
		return fmt.Errorf("%w: %s: the Hetzner Cloud API answered without an error body: %v", csierr.ErrUnavailable, what, err)
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return fmt.Errorf("%w: %s: cannot reach the Hetzner Cloud API: %v", csierr.ErrUnavailable, what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// retryAfter says when a rate-limited call may be made again, from the
// answer's Retry-After header or its RateLimit-Reset.
func retryAfter(resp *hcloud.Response) string {
	if resp == nil || resp.Response == nil {
		return "retry later"
	}
	if s := resp.Header.Get("Retry-After"); s != "" {
		if secs, err := strconv.Atoi(s); err == nil && secs >= 0 {
			return fmt.Sprintf("retry after %ds", secs)
		}
		if t, err := http.ParseTime(s); err == nil {
			return fmt.Sprintf("retry after %ds", int(math.Ceil(time.Until(t).Seconds())))
		}
	}
	if s := resp.Header.Get("RateLimit-Reset"); s != "" {
		if ts, err := strconv.ParseInt(s, 10, 64); err == nil {
			wait := max(0, int(math.Ceil(time.Until(time.Unix(ts, 0)).Seconds())))
			return fmt.Sprintf("the request budget refills fully in %ds (RateLimit-Reset); a retry after a few seconds may already succeed", wait)
		}
	}
	return "retry later"
}
