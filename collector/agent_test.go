package collector

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestAgent_SetState(t *testing.T) {
	m := NewAgent(prometheus.NewRegistry())
	for _, current := range AgentStates() {
		t.Run(current, func(t *testing.T) {
			m.SetState(current)
			for _, s := range AgentStates() {
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
	NewAgent(reg)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}
