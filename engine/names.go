package engine

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
)

// newID returns a fresh 64-hex-digit identifier, as Docker's IDs.
func newID() string {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand panics rather than return an error)
	return hex.EncodeToString(b[:])
}

// shortID is the 12-digit form ps prints and the default hostname.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// validName is the pattern Docker accepts for container names.
var validName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`)

// checkName validates a user-given sandbox name, accepting Docker's
// optional leading "/", and returns it without the slash.
func checkName(name string) (string, error) {
	n := strings.TrimPrefix(name, "/")
	if !validName.MatchString(n) {
		return "", errorf(ErrInvalid, "invalid sandbox name %q: use at least two characters from [a-zA-Z0-9_.-], starting with a letter or digit", name)
	}
	if isHex64(n) {
		// A name that looks like an ID would make name and ID lookup ambiguous.
		return "", errorf(ErrInvalid, "invalid sandbox name %q: a name may not look like a 64-digit ID", name)
	}
	return n, nil
}

// isHex64 reports whether s is a full ID.
func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// Word lists for random names: adjective_surname, as Docker names
// containers. Ours are our own: adjectives of temperament and surnames of
// people who shaped networking and computing.
var (
	nameAdjectives = []string{
		"agile", "bold", "brave", "bright", "busy", "calm", "clever", "cool",
		"curious", "daring", "eager", "fast", "fond", "gentle", "happy", "humble",
		"jolly", "keen", "kind", "lively", "loyal", "lucid", "merry", "modest",
		"neat", "nimble", "patient", "plucky", "proud", "quick", "quiet", "rapid",
		"serene", "sharp", "steady", "sunny", "swift", "tender", "vivid", "witty",
	}
	nameSurnames = []string{
		"baran", "berners", "borg", "cerf", "clark", "davies", "deering", "dijkstra",
		"estrin", "floyd", "hamming", "hopper", "huffman", "jacobson", "kahn", "karn",
		"kleinrock", "knuth", "lamport", "liskov", "lovelace", "metcalfe", "mockapetris", "nagle",
		"perlman", "postel", "ritchie", "roberts", "saltzer", "shannon", "sutherland", "tanenbaum",
		"thompson", "torvalds", "turing", "vixie", "wirth", "zhang", "zimmermann", "zuse",
	}
)

// randomName returns an adjective_surname name; taken reports names in use.
// After many collisions it appends a digit, as Docker does, so that it
// always terminates.
func randomName(taken func(string) bool) string {
	for i := 0; ; i++ {
		n := pick(nameAdjectives) + "_" + pick(nameSurnames)
		if i >= 10 {
			n = fmt.Sprintf("%s%d", n, i)
		}
		if !taken(n) {
			return n
		}
	}
}

// pick returns a uniformly random element of words.
func pick(words []string) string {
	var b [2]byte
	rand.Read(b[:])
	return words[(int(b[0])<<8|int(b[1]))%len(words)]
}

// resolve finds the one ID that key denotes: a full ID, a name (with or
// without a leading "/"), or a unique ID prefix, in that order of
// precedence, as Docker resolves them. kind names the object in errors
// ("sandbox", "network").
func resolve(kind, key string, ids []string, names map[string]string) (string, error) {
	if key == "" {
		return "", errorf(ErrInvalid, "empty %s name or ID", kind)
	}
	for _, id := range ids {
		if id == key {
			return id, nil
		}
	}
	if id, ok := names[strings.TrimPrefix(key, "/")]; ok {
		return id, nil
	}
	var match []string
	for _, id := range ids {
		if strings.HasPrefix(id, key) {
			match = append(match, id)
		}
	}
	switch len(match) {
	case 0:
		return "", errorf(ErrNotFound, "no such %s: %s", kind, key)
	case 1:
		return match[0], nil
	default:
		return "", errorf(ErrConflict, "%d %s IDs start with %q: give more digits or the name", len(match), kind, key)
	}
}
