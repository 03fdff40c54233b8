package bootserver

import (
	"sort"
	"sync"
	"time"
)

// MachineStatus is what the server knows of one machine, as the status
// page and GET /v1/machines show it.
type MachineStatus struct {
	Name      string `json:"name"`
	MAC       string `json:"mac,omitempty"`
	Role      string `json:"role,omitempty"`
	Image     string `json:"image,omitempty"`
	Rootfs    string `json:"rootfs,omitempty"`
	State     string `json:"state"` // last stage, stateUnknown for refused machines, "" before any contact
	LastEvent string `json:"last_event,omitempty"`
	IP        string `json:"ip,omitempty"` // the last request about it came from here (anyone may send one)
	// Addr is where an authenticated report of the machine came from:
	// what the site DNS may name it by when it has no static address.
	Addr      string            `json:"addr,omitempty"`
	FirstSeen time.Time         `json:"first_seen,omitempty"`
	LastSeen  time.Time         `json:"last_seen,omitempty"`
	Known     bool              `json:"known"` // in the site
	Events    int               `json:"events"`
	Fields    map[string]string `json:"fields,omitempty"`
	// Journals are the units whose journal the machine sent (GET
	// api.LogPath).
	Journals []string `json:"journals,omitempty"`
}

// stateTable is the fleet's boot state.
type stateTable struct {
	mu   sync.Mutex
	m    map[string]*MachineStatus
	subs map[chan MachineStatus]struct{}
}

func newStateTable() *stateTable {
	return &stateTable{m: map[string]*MachineStatus{}, subs: map[chan MachineStatus]struct{}{}}
}

// Machines the site refused are listed so an operator can add them, but
// anyone can invent MACs: the list keeps at most maxUnknown of them, and
// none the server has not heard from for unknownTTL (a refused machine
// asks again every refuseRetry, so one still trying stays listed).
const (
	maxUnknown = 256
	unknownTTL = 15 * time.Minute
)

// update changes one machine and tells subscribers.
func (t *stateTable) update(name string, f func(*MachineStatus)) MachineStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.m[name]
	if !ok {
		st = &MachineStatus{Name: name}
		t.m[name] = st
	}
	f(st)
	if !ok && st.State == stateUnknown {
		t.pruneUnknown(st)
	}
	out := *st
	for c := range t.subs {
		select {
		case c <- out:
		default: // a slow page misses an update; the next one carries the state
		}
	}
	return out
}

// pruneUnknown drops refused machines last heard from before unknownTTL,
// then, beyond maxUnknown, the least recently heard from; never keep. It
// runs as each one is added, so at most one is over the cap.
func (t *stateTable) pruneUnknown(keep *MachineStatus) {
	var oldest *MachineStatus
	n := 0
	cutoff := time.Now().Add(-unknownTTL)
	for name, st := range t.m {
		if st.State != stateUnknown || st.Known || st == keep {
			continue
		}
		if st.LastSeen.Before(cutoff) {
			delete(t.m, name)
			continue
		}
		n++
		if oldest == nil || st.LastSeen.Before(oldest.LastSeen) {
			oldest = st
		}
	}
	if n >= maxUnknown && oldest != nil {
		delete(t.m, oldest.Name)
	}
}

func (t *stateTable) get(name string) (MachineStatus, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.m[name]
	if !ok {
		return MachineStatus{}, false
	}
	return *st, true
}

func (t *stateTable) list() []MachineStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]MachineStatus, 0, len(t.m))
	for _, st := range t.m {
		out = append(out, *st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (t *stateTable) subscribe() (chan MachineStatus, func()) {
	c := make(chan MachineStatus, 64)
	t.mu.Lock()
	t.subs[c] = struct{}{}
	t.mu.Unlock()
	return c, func() {
		t.mu.Lock()
		delete(t.subs, c)
		t.mu.Unlock()
	}
}

// stateUnknown is the state of a machine the site refused.
const stateUnknown = "unknown"
