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

package agent

// Registration states of the agent: where its lifecycle stands with the
// discovery server, exported as the state label of
// baremetal_sd_agent_registration_state.
const (
	// stateEnrolling: no certificate yet; the agent is enrolling and
	// does not serve.
	stateEnrolling = "enrolling"
	// stateRegistered: the last call to the server succeeded.
	stateRegistered = "registered"
	// stateUnreachable: no server could be reached or every server
	// failed; the agent keeps serving with its certificate.
	stateUnreachable = "unreachable"
	// stateRevoked: the server refused the agent's certificate (revoked,
	// superseded or unknown); the agent keeps serving until it expires.
	stateRevoked = "revoked"
	// stateTokenNeeded: the agent has no usable certificate and no
	// usable enrollment token; an operator must provide a new token.
	stateTokenNeeded = "token_needed"
	// stateRefused: the server refused the registration's content (a
	// bad hostname, label or exporter); the agent's flags need fixing.
	stateRefused = "refused"
)

// registrationStates lists every registration state, in the order the
// metric shows them.
func registrationStates() []string {
	return []string{stateEnrolling, stateRegistered, stateUnreachable,
		stateRevoked, stateTokenNeeded, stateRefused}
}
