// Package e2e holds usernet's end-to-end tests: they build the real usernet
// binary and drive it as an unprivileged user, with real tools (ping, curl,
// dig, nc, python3) inside sandboxes and real peers outside them.
//
// The tests need root to set the stage (create the test user, make
// /dev/net/tun usable, build a network namespace that plays "the internet")
// and then never use root for usernet itself: every usernet command runs with
// the test user's credentials and its own XDG_RUNTIME_DIR and XDG_DATA_HOME.
// Without root the whole package skips with the reason; run it with
//
//	go test ./e2e/ -v
//
// as root (CI does). Knobs, all optional: USERNET_E2E_RACE=1 builds the
// binary with -race (the daemon's log is then checked for races),
// USERNET_E2E_TAGS=a,b adds build tags, USERNET_E2E_BIN=/path tests a binary
// built elsewhere. The tests share one daemon and run one at a time; each
// starts from an empty `usernet ps -a` and removes what it made.
//
// The package has no non-test code besides this comment.
package e2e
