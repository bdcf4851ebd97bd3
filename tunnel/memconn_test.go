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

package tunnel

import (
	"net"
	"testing"

	"golang.org/x/net/nettest"
)

type testAddr string

func (a testAddr) Network() string { return "test" }
func (a testAddr) String() string  { return string(a) }

// TestMemPipe_Conn runs x/net's conformance tests of net.Conn on the
// in-process connection: reads, writes, deadlines, closing, concurrent
// use.
func TestMemPipe_Conn(t *testing.T) {
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		a, b := memPipe(testAddr("a"), testAddr("b"))
		return a, b, func() { _ = a.Close(); _ = b.Close() }, nil
	})
}
