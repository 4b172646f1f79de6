package stack

import "sync"

// flowKey4 names an IPv4 flow as frames from the guest carry it: the guest's
// address and port first.
type flowKey4 struct {
	src, dst     [4]byte
	sport, dport uint16
}

// flowMap maps the flows the gateway carries past netstack (translated TCP,
// shortcut UDP) to their state. Lookups happen for every frame, changes
// once per flow, hence the read lock. The zero value is empty and ready.
type flowMap[V comparable] struct {
	mu sync.RWMutex
	m  map[flowKey4]V
}

// lookup returns k's flow, or V's zero value.
func (t *flowMap[V]) lookup(k flowKey4) V {
	t.mu.RLock()
	v := t.m[k]
	t.mu.RUnlock()
	return v
}

// add registers v for k unless k already has a flow.
func (t *flowMap[V]) add(k flowKey4, v V) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, taken := t.m[k]; taken {
		return false
	}
	if t.m == nil {
		t.m = make(map[flowKey4]V)
	}
	t.m[k] = v
	return true
}

// remove drops k if v is still its flow: a newer flow with the same
// addresses stays.
func (t *flowMap[V]) remove(k flowKey4, v V) {
	t.mu.Lock()
	if cur, ok := t.m[k]; ok && cur == v {
		delete(t.m, k)
	}
	t.mu.Unlock()
}

// all returns every flow.
func (t *flowMap[V]) all() []V {
	t.mu.RLock()
	defer t.mu.RUnlock()
	vs := make([]V, 0, len(t.m))
	for _, v := range t.m {
		vs = append(vs, v)
	}
	return vs
}

// len reports the number of flows.
func (t *flowMap[V]) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.m)
}
