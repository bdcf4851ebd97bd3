// Package ca is the certificate authority and token signer of baremetal_sd.
// It creates or loads the CA in the server's data directory, checks
// certificate requests received from the network, signs agent, client and
// serving certificates (their role is encoded by the CA, never chosen by the
// requester), and creates and verifies the HS256 tokens used for enrollment,
// discovery and administration.
package ca
