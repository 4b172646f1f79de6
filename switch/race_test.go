//go:build race

package vswitch

// raceEnabled reports whether the race detector, which allocates on its
// own, is on: allocation tests skip then.
const raceEnabled = true
