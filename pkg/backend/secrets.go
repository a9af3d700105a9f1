package backend

import "context"

type secretsKey struct{}

// WithSecrets returns ctx carrying the secrets of a CSI request, for the
// backends that take credentials from them. The services add them; the
// backend interface stays free of them.
func WithSecrets(ctx context.Context, secrets map[string]string) context.Context {
	if len(secrets) == 0 {
		return ctx
	}
	return context.WithValue(ctx, secretsKey{}, secrets)
}

// Secrets returns the secrets WithSecrets put into ctx, or nil.
func Secrets(ctx context.Context) map[string]string {
	s, _ := ctx.Value(secretsKey{}).(map[string]string)
	return s
}
