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
