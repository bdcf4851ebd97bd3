package server

import (
	"reflect"
	"testing"
)

func TestReservedNames_LoopbackStaysFree(t *testing.T) {
	for _, tc := range []struct {
		in, want []string
	}{
		{[]string{"sd-1", "localhost", "127.0.0.1", "::1"}, []string{"sd-1"}},
		{[]string{"sd.example.org", "192.0.2.53", "LOCALHOST", "127.0.0.2"}, []string{"sd.example.org", "192.0.2.53"}},
		{nil, nil},
	} {
		if got := reservedNames(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("reservedNames(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
