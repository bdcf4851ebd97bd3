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

package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestChaosHarness_ViolationsCountedByKind: a violation found at every
// check is one line with its count, and does not crowd out the others. (The
// one-hour etcd run of 19:38 filled the 200 lines it kept with one agent
// missing from http_sd by minute 14, and whatever else the last 46 minutes
// found was lost.)
func TestChaosHarness_ViolationsCountedByKind(t *testing.T) {
	c := &chaos{faultStart: time.Now(), violations: map[string]*violation{}}
	for range 500 {
		c.violate("server %s: healthy agent %s is missing from http_sd", "a", "chaos-agent-1")
	}
	c.violate("server %s lost the acknowledged registration %s", "b", "x")
	for i := range maxViolationKinds + 10 {
		c.violate("kind %d", i)
	}
	lines := c.violationLines()
	if len(lines) != maxViolationKinds+1 {
		t.Fatalf("%d lines, want %d", len(lines), maxViolationKinds+1)
	}
	for _, want := range []string{
		"0s: server a: healthy agent chaos-agent-1 is missing from http_sd (found 500 times, last at 0s)",
		"0s: server b lost the acknowledged registration x",
		"0s: more kinds of violations than the report keeps (found 12 times, last at 0s)",
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("no line %q in:\n%s", want, strings.Join(lines[:3], "\n"))
		}
	}
	if !slices.Contains(lines, fmt.Sprintf("0s: kind %d", maxViolationKinds-3)) || slices.Contains(lines, fmt.Sprintf("0s: kind %d", maxViolationKinds-2)) {
		t.Errorf("kept the wrong kinds: want the first %d", maxViolationKinds)
	}
}
