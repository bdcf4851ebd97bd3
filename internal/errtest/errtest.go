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

// Package errtest checks the error of a table-driven test case against the
// part of its message the case expects. Only tests use it.
package errtest

import (
	"strings"
	"testing"
)

// Want fails the test unless err is what the case expects: no error when
// want is empty, otherwise an error whose message contains want. It
// reports whether an error was expected, so that the case ends there:
//
//	if errtest.Want(t, err, tc.wantErr) {
//		return
//	}
func Want(t testing.TB, err error, want string) bool {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatal(err)
		}
		return false
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want one containing %q", err, want)
	}
	return true
}
