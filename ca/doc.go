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

// Package ca is the certificate authority and token signer of baremetal_sd.
// It creates or loads the CA in the server's data directory, checks
// certificate requests received from the network, signs agent, client and
// serving certificates (their role is encoded by the CA, never chosen by the
// requester), and creates and verifies the HS256 tokens used for enrollment,
// discovery and administration.
package ca
