package backend

// ConfigError is a bad setting of a backend: Field names it as the
// backend's Config documents it (monitors, pool, key...), so that the
// driver can say which of its flags and variables to correct.
type ConfigError struct{ Field, Msg string }

func (e *ConfigError) Error() string { return e.Field + ": " + e.Msg }
