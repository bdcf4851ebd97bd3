// Copyright The baremetal_sd Authors
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

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
