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

package protocol

import (
	"strings"
	"testing"
)

func TestValidateAgentID(t *testing.T) {
	tests := map[string]bool{
		"host-1.example_a":                   true,
		"01jd2x7k9q8w3e4r5t6y7u8i9o":         true,
		"":                                   false,
		"self":                               false, // the calling agent in /api/v1/agents/self
		"a/b":                                false,
		"a b":                                false,
		"ünïcödé":                            false,
		strings.Repeat("a", MaxAgentIDLen):   true,
		strings.Repeat("a", MaxAgentIDLen+1): false,
	}
	for id, ok := range tests {
		if err := ValidateAgentID(id); (err == nil) != ok {
			t.Errorf("ValidateAgentID(%q) = %v, want ok=%v", id, err, ok)
		}
	}
}
