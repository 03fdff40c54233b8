package lab

import (
	"slices"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/bootserver"
)

// Progress tells a machine that is getting somewhere from one that is
// stuck, from what the boot server shows of it. A machine progresses when
// it shows a state it has not shown before: a new boot stage, a new
// message from its agent (an API server's /readyz naming fewer unfinished
// hooks), a unit in a new state. Heartbeats repeating the same report, and
// a unit cycling through states it has already been in (a crash loop), are
// not progress. Waiting on progress rather than a clock lets a slow host
// take as long as it needs, and a broken machine fail within Stall.
type Progress struct {
	// Stall is how long a machine may show nothing new.
	Stall time.Duration
	seen  map[string]map[string]bool // machine → fingerprints shown
	moved map[string]time.Time       // machine → when it last showed something new
}

// NewProgress returns a tracker that gives a machine stall to show
// something new.
func NewProgress(stall time.Duration) *Progress {
	return &Progress{Stall: stall, seen: map[string]map[string]bool{}, moved: map[string]time.Time{}}
}

// Observe records what the server shows now of the named machines (a
// machine missing from list has shown nothing yet) and returns those that
// have shown nothing new for Stall, in the order of names.
func (p *Progress) Observe(now time.Time, names []string, list []bootserver.MachineStatus) []string {
	byName := map[string]bootserver.MachineStatus{}
	for _, st := range list {
		byName[st.Name] = st
	}
	var stalled []string
	for _, n := range names {
		fp := fingerprint(byName[n])
		if p.seen[n] == nil {
			p.seen[n] = map[string]bool{}
		}
		if !p.seen[n][fp] {
			p.seen[n][fp] = true
			p.moved[n] = now
		}
		if now.Sub(p.moved[n]) >= p.Stall {
			stalled = append(stalled, n)
		}
	}
	return stalled
}

// Since is how long ago the machine last showed something new.
func (p *Progress) Since(now time.Time, name string) time.Duration { return now.Sub(p.moved[name]) }

// fingerprint is what of a machine's status counts as its state: the boot
// stage, the last message and each unit's state; not the load, memory,
// ports, journal tails or restart counts an agent adds to every report.
func fingerprint(st bootserver.MachineStatus) string {
	var b strings.Builder
	b.WriteString(st.State)
	b.WriteByte(0)
	b.WriteString(st.LastEvent)
	keys := make([]string, 0, len(st.Fields))
	for k := range st.Fields {
		if isUnit(k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		b.WriteByte(0)
		b.WriteString(k + "=" + st.Fields[k])
	}
	return b.String()
}

// isUnit says whether an agent's field is a unit's state ("kubelet.service")
// rather than something else it reports ("log kubelet.service", "load").
func isUnit(field string) bool {
	return !strings.Contains(field, " ") && strings.Contains(field, ".")
}
