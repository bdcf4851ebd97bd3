// Package collector defines the self-metrics of the baremetal_sd server,
// agent and relay. Each role creates its set on its own registry; nothing
// here registers itself globally.
package collector
