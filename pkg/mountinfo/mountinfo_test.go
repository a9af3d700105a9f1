package mountinfo

import "testing"

func TestMountinfoUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/data/rbd/fuse/x`:       "/data/rbd/fuse/x",
		`/data/with\040space`:    "/data/with space",
		`/tab\011and\134slash`:   "/tab\tand\\slash",
		`/ends\040`:              "/ends ",
		`/not\04`:                `/not\04`,
		`/bad\999escape`:         `/bad\999escape`,
		`\040`:                   " ",
		`/a\040b\040c\040d\040e`: "/a b c d e",
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
