package backend

// Sizes, in bytes.
const (
	MiB = int64(1) << 20
	GiB = int64(1) << 30
)
