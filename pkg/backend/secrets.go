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

type publishContextKey struct{}

// WithPublishContext returns ctx carrying the publish context of a node
// request, for backends that keep in it what they would otherwise read
// from the storage. It may be empty: Swarm loses it after a leader change
// (SwarmKit #3276), so a backend reads what it lacks.
func WithPublishContext(ctx context.Context, pc map[string]string) context.Context {
	if len(pc) == 0 {
		return ctx
	}
	return context.WithValue(ctx, publishContextKey{}, pc)
}

// PublishContext returns the publish context WithPublishContext put into
// ctx, or nil.
func PublishContext(ctx context.Context) map[string]string {
	pc, _ := ctx.Value(publishContextKey{}).(map[string]string)
	return pc
}
