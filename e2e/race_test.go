//go:build race

package e2e

// raceEnabled says that the tests run under the race detector.
const raceEnabled = true
