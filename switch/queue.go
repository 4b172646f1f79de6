package vswitch

import "sync"

// writeBatch is the most frames a writer goroutine takes from its queue
// for one WriteFrames call (before software segmentation, which can turn
// one super-frame into dozens of frames).
const writeBatch = 64

// defaultQueueLen is the transmit queue bound when PortConfig.QueueLen is 0.
const defaultQueueLen = 1024

// txQueue is one port's bounded transmit queue: a ring of frame
// references filled by any number of Input calls and drained in batches
// by the port's single writer goroutine. Each port has its own, so ports
// never contend with each other on the forwarding path.
type txQueue struct {
	mu       sync.Mutex
	notEmpty sync.Cond // the writer waits here for frames
	notFull  sync.Cond // Inputs of Block ports wait here for room
	ring     []*Frame
	head     int  // index of the oldest frame
	n        int  // frames queued
	closed   bool // set by close; push then refuses and the writer exits
}

func (q *txQueue) init(n int) {
	q.ring = make([]*Frame, n)
	q.notEmpty.L = &q.mu
	q.notFull.L = &q.mu
}

// push queues f and reports whether it did, and whether the queue was
// empty before: then the writer may be asleep and the caller must wake
// it, now or (to hand the writer a whole batch) once it has queued the
// rest of its frames. A full queue refuses the frame unless block is
// set, in which case push wakes the writer and waits for it to make room.
// A closed queue always refuses. The caller keeps the reference to a
// refused frame.
func (q *txQueue) push(f *Frame, block bool) (ok, wake bool) {
	q.mu.Lock()
	for block && q.n == len(q.ring) && !q.closed {
		q.notEmpty.Signal() // the wake may still be pending with our caller
		q.notFull.Wait()
	}
	if q.closed || q.n == len(q.ring) {
		q.mu.Unlock()
		return false, false
	}
	q.ring[(q.head+q.n)%len(q.ring)] = f
	q.n++
	wake = q.n == 1
	q.mu.Unlock()
	return true, wake
}

// wake wakes the writer if it is waiting. It needs no lock: a writer that
// saw an empty queue registered as a waiter before releasing the lock,
// so it cannot miss a wake that follows a push.
func (q *txQueue) wake() { q.notEmpty.Signal() }

// pop waits for at least one frame and appends up to cap(dst)-len(dst) of
// them to dst. It reports false once the queue is closed; the frames still
// queued then belong to whoever called close.
func (q *txQueue) pop(dst []*Frame) ([]*Frame, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.n == 0 && !q.closed {
		q.notEmpty.Wait()
	}
	if q.closed {
		return dst, false
	}
	wasFull := q.n == len(q.ring)
	for q.n > 0 && len(dst) < cap(dst) {
		dst = append(dst, q.ring[q.head])
		q.ring[q.head] = nil
		q.head = (q.head + 1) % len(q.ring)
		q.n--
	}
	if wasFull {
		q.notFull.Broadcast()
	}
	return dst, true
}

// close stops the queue, wakes the writer and every blocked push, and
// drops the references of the frames still queued.
func (q *txQueue) close() {
	q.mu.Lock()
	q.closed = true
	for ; q.n > 0; q.n-- {
		q.ring[q.head].DecRef()
		q.ring[q.head] = nil
		q.head = (q.head + 1) % len(q.ring)
	}
	q.notEmpty.Broadcast()
	q.notFull.Broadcast()
	q.mu.Unlock()
}
