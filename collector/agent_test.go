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

package collector

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestAgent_SetState(t *testing.T) {
	states := []string{"enrolling", "registered", "unreachable"}
	m := NewAgent(prometheus.NewRegistry(), states)
	for _, current := range states {
		t.Run(current, func(t *testing.T) {
			m.SetState(current)
			for _, s := range states {
				want := 0.0
				if s == current {
					want = 1
				}
				if got := testutil.ToFloat64(m.RegistrationState.WithLabelValues(s)); got != want {
					t.Errorf("registration_state{state=%q} = %v, want %v", s, got, want)
				}
			}
		})
	}
}

func TestAgent_MetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewAgent(reg, []string{"enrolling", "registered"})
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}
