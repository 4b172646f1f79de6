package vswitch

// flood is the second half of step 6 (see forward.go): it sends f to
// every port it may reach except the one it came from. Broadcast,
// multicast (including IPv6's 33:33:* groups, which the switch does not
// snoop) and unicast to a MAC the switch has not learned all take this
// path. With ICC off, a frame from a port that is not a Gateway port
// floods to Gateway ports only, so endpoints cannot discover or reach
// each other through broadcast either.
//
// The port list is a copy-on-write snapshot, so flooding takes no lock.
// The references for all destinations are taken before the first enqueue:
// a writer that sees a frame with one reference may then rely on owning it
// alone (prepare does, to checksum in place).
func (a *Attachment) flood(f *Frame, icc bool, w *wakes) {
	ports := *a.sw.ports.Load()
	n := 0
	for _, d := range ports {
		if d != a && a.reaches(d, icc) {
			n++
		}
	}
	if n == 0 {
		f.DecRef()
		return
	}
	f.refs.Add(int32(n - 1))
	for _, d := range ports {
		if d != a && a.reaches(d, icc) {
			a.enqueue(d, f, w)
		}
	}
}
