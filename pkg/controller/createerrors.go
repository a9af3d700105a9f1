package controller

import (
	"container/list"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/swarm-csi/swarm-csi/pkg/csierr"
)

// Swarm shows nothing of a CreateVolume that fails: the volume stays
// "pending creation" and the reason is only in the plugin's log on the
// leader. The controller keeps the last failure of each volume name so
// that `swarm-csi doctor` can show it.

// CreateError is the last failed CreateVolume of a volume name.
type CreateError struct {
	Name     string    `json:"name"`
	Code     string    `json:"code"`    // the gRPC code
	Message  string    `json:"message"` // secrets of the request blanked out
	First    time.Time `json:"first"`   // first failure since the last success
	Last     time.Time `json:"last"`
	Attempts int       `json:"attempts"` // failures since the last success
}

const (
	// maxCreateErrors is how many names are remembered; the ones that
	// failed least recently go first.
	maxCreateErrors = 1000
	// maxCreateErrorText bounds what is kept of a name and a message.
	maxCreateErrorText = 2048
)

// createErrors is the record, most recent failure first.
type createErrors struct {
	mu     sync.Mutex
	max    int
	order  *list.List // of *CreateError
	byName map[string]*list.Element
	now    func() time.Time
}

func newCreateErrors(max int) *createErrors {
	return &createErrors{max: max, order: list.New(), byName: map[string]*list.Element{}, now: time.Now}
}

// note records the outcome of a CreateVolume: a success forgets the
// name, a failure replaces its last error.
func (r *createErrors) note(req *csi.CreateVolumeRequest, err error) {
	name := truncate(req.GetName())
	if name == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	el, ok := r.byName[name]
	if err == nil {
		if ok {
			r.order.Remove(el)
			delete(r.byName, name)
		}
		return
	}
	st := status.Convert(csierr.Status(err))
	now := r.now()
	e := &CreateError{Name: name, Code: st.Code().String(), Message: truncate(blankSecrets(st.Message(), req.GetSecrets())),
		First: now, Last: now, Attempts: 1}
	if ok {
		old := el.Value.(*CreateError)
		e.First, e.Attempts = old.First, old.Attempts+1
		el.Value = e
		r.order.MoveToFront(el)
		return
	}
	r.byName[name] = r.order.PushFront(e)
	for r.order.Len() > r.max {
		last := r.order.Back()
		delete(r.byName, last.Value.(*CreateError).Name)
		r.order.Remove(last)
	}
}

// list returns the record, most recent failure first.
func (r *createErrors) list() []CreateError {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]CreateError, 0, r.order.Len())
	for el := r.order.Front(); el != nil; el = el.Next() {
		out = append(out, *el.Value.(*CreateError))
	}
	return out
}

// blankSecrets replaces every secret value of a request found in msg.
func blankSecrets(msg string, secrets map[string]string) string {
	for _, v := range secrets {
		if v != "" {
			msg = strings.ReplaceAll(msg, v, "[secret]")
		}
	}
	return msg
}

func truncate(s string) string {
	if len(s) > maxCreateErrorText {
		return s[:maxCreateErrorText] + "..."
	}
	return s
}

// CreateErrors returns the last failed CreateVolume of each volume name
// (at most the 1,000 names that failed last), most recent first. A name
// is forgotten when it is created.
func (s *Server) CreateErrors() []CreateError { return s.createErrs.list() }

// The record is served on the plugin's socket, beside the CSI services, as
// the method CreateErrorsMethod of a small gRPC service of the driver's
// own: an empty request, the record as JSON in the answer.
const (
	diagnosticsService = "swarmcsi.v1.Diagnostics"
	CreateErrorsMethod = "/" + diagnosticsService + "/CreateErrors"
)

// Diagnostics is what the service serves: a *Server.
type Diagnostics interface{ CreateErrors() []CreateError }

var diagnosticsDesc = grpc.ServiceDesc{
	ServiceName: diagnosticsService,
	HandlerType: (*Diagnostics)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "CreateErrors",
		Handler: func(srv any, ctx context.Context, dec func(any) error, intercept grpc.UnaryServerInterceptor) (any, error) {
			in := new(emptypb.Empty)
			if err := dec(in); err != nil {
				return nil, err
			}
			handle := func(context.Context, any) (any, error) {
				b, err := json.Marshal(srv.(Diagnostics).CreateErrors())
				if err != nil {
					return nil, err
				}
				return wrapperspb.Bytes(b), nil
			}
			if intercept == nil {
				return handle(ctx, in)
			}
			return intercept(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: CreateErrorsMethod}, handle)
		},
	}},
}

// RegisterDiagnostics serves s.CreateErrors on srv.
func RegisterDiagnostics(srv grpc.ServiceRegistrar, s Diagnostics) {
	srv.RegisterService(&diagnosticsDesc, s)
}

// FetchCreateErrors asks a plugin's socket for its record. A plugin
// without it answers Unimplemented.
func FetchCreateErrors(ctx context.Context, conn grpc.ClientConnInterface) ([]CreateError, error) {
	out := new(wrapperspb.BytesValue)
	if err := conn.Invoke(ctx, CreateErrorsMethod, &emptypb.Empty{}, out); err != nil {
		return nil, err
	}
	var errs []CreateError
	if err := json.Unmarshal(out.GetValue(), &errs); err != nil {
		return nil, err
	}
	return errs, nil
}
