package bootserver

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
)

// journals holds the last journal each machine uploaded for each unit,
// and the units operators asked machines for. It lives in memory, like
// the status table: a journal is a debugging aid, not a record.
type journals struct {
	mu      sync.Mutex
	logs    map[string]map[string]journal   // machine → unit → last upload
	want    map[string]map[string]time.Time // machine → unit → when asked
	bytes   int
	changed chan struct{} // closed and replaced on each upload
}

type journal struct {
	text []byte
	at   time.Time
}

const (
	// journalBudget bounds the memory all journals take together; the
	// oldest uploads go first.
	journalBudget = 64 << 20
	// unitsPerMachine bounds how many units one machine keeps journals of.
	unitsPerMachine = 32
	// wantFor is how long an operator's request stands: a machine that
	// does not report in that time is not asked later for a journal nobody
	// waits for any more.
	wantFor = 5 * time.Minute
	// maxFreshWait bounds GET ?fresh=SECONDS.
	maxFreshWait = 5 * time.Minute
)

func newJournals() *journals {
	return &journals{logs: map[string]map[string]journal{}, want: map[string]map[string]time.Time{}, changed: make(chan struct{})}
}

// put stores an upload, dropping the oldest journals past the budget, and
// returns the machine's units that now have one.
func (j *journals) put(machine, unit string, text []byte, at time.Time) []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	m := j.logs[machine]
	if m == nil {
		m = map[string]journal{}
		j.logs[machine] = m
	}
	if old, ok := m[unit]; ok {
		j.bytes -= len(old.text)
	} else if len(m) >= unitsPerMachine {
		j.dropOldest(func(mach, _ string) bool { return mach == machine })
	}
	m[unit] = journal{text: text, at: at}
	j.bytes += len(text)
	for j.bytes > journalBudget {
		j.dropOldest(func(mach, u string) bool { return mach != machine || u != unit })
	}
	if w, ok := j.want[machine][unit]; ok && !w.After(at) {
		delete(j.want[machine], unit)
	}
	close(j.changed)
	j.changed = make(chan struct{})
	return j.unitsLocked(machine)
}

// dropOldest removes the oldest journal among those keep allows to go.
func (j *journals) dropOldest(may func(machine, unit string) bool) {
	var om, ou string
	var oat time.Time
	for mach, units := range j.logs {
		for u, jl := range units {
			if may(mach, u) && (om == "" || jl.at.Before(oat)) {
				om, ou, oat = mach, u, jl.at
			}
		}
	}
	if om == "" {
		return
	}
	j.bytes -= len(j.logs[om][ou].text)
	delete(j.logs[om], ou)
}

func (j *journals) unitsLocked(machine string) []string {
	var units []string
	for u := range j.logs[machine] {
		units = append(units, u)
	}
	slices.Sort(units)
	return units
}

// get returns a machine's last upload for a unit.
func (j *journals) get(machine, unit string) (journal, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	jl, ok := j.logs[machine][unit]
	return jl, ok
}

// ask records that an operator wants a fresh journal of unit from machine.
func (j *journals) ask(machine, unit string, now time.Time) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.want[machine] == nil {
		j.want[machine] = map[string]time.Time{}
	}
	if _, ok := j.want[machine][unit]; !ok {
		j.want[machine][unit] = now
	}
}

// wanted lists the units the machine is asked for, forgetting requests
// older than wantFor.
func (j *journals) wanted(machine string, now time.Time) []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	var units []string
	for u, at := range j.want[machine] {
		if now.Sub(at) > wantFor {
			delete(j.want[machine], u)
			continue
		}
		units = append(units, u)
	}
	slices.Sort(units)
	return units
}

// wait blocks until machine uploads unit at or after since, or ctx ends.
func (j *journals) wait(ctx context.Context, machine, unit string, since time.Time) (journal, bool) {
	for {
		j.mu.Lock()
		jl, ok := j.logs[machine][unit]
		ch := j.changed
		j.mu.Unlock()
		if ok && !jl.at.Before(since) {
			return jl, true
		}
		select {
		case <-ctx.Done():
			return jl, ok
		case <-ch:
		}
	}
}

// logTarget checks a logs request's machine and unit: a machine the
// server knows, a unit name systemd could have.
func (s *Server) logTarget(w http.ResponseWriter, r *http.Request) (machine, unit string, ok bool) {
	machine = r.PathValue("id")
	if st, known := s.state.get(machine); !known || st.State == stateUnknown {
		s.fail(w, r, http.StatusNotFound, "logs: no machine "+machine, "machine", machine)
		return "", "", false
	}
	unit, ok = api.UnitName(r.PathValue("unit"))
	if !ok {
		s.fail(w, r, http.StatusBadRequest, fmt.Sprintf("logs: %q is not a unit name", r.PathValue("unit")), "machine", machine)
		return "", "", false
	}
	return machine, unit, true
}

// uploadLog takes a unit's journal from the machine's agent.
func (s *Server) uploadLog(w http.ResponseWriter, r *http.Request) {
	machine, unit, ok := s.logTarget(w, r)
	if !ok {
		return
	}
	if _, err := s.authenticate(r, machine); err != nil {
		s.refuseReport(w, r, machine, err)
		return
	}
	text, err := s.readBody(w, r, api.MaxLogBytes)
	if err != nil {
		s.failBody(w, r, "logs", api.MaxLogBytes, err, "machine", machine)
		return
	}
	units := s.journals.put(machine, unit, text, time.Now().UTC())
	s.state.update(machine, func(st *MachineStatus) { st.Journals = units })
	s.log.Debug("journal", "machine", machine, "unit", unit, "bytes", len(text))
	w.WriteHeader(http.StatusNoContent)
}

// serveLog returns a unit's last journal from a machine; with
// ?fresh=SECONDS it first asks the machine for a new one (through the
// reply to its next report) and waits up to that long for it.
func (s *Server) serveLog(w http.ResponseWriter, r *http.Request) {
	machine, unit, ok := s.logTarget(w, r)
	if !ok {
		return
	}
	jl, have := s.journals.get(machine, unit)
	if v := r.URL.Query().Get("fresh"); v != "" {
		secs, err := strconv.Atoi(v)
		if err != nil || secs < 1 || time.Duration(secs)*time.Second > maxFreshWait {
			s.fail(w, r, http.StatusBadRequest, fmt.Sprintf("logs: fresh=%q: want whole seconds from 1 to %.0f", v, maxFreshWait.Seconds()))
			return
		}
		now := time.Now().UTC()
		s.journals.ask(machine, unit, now)
		ctx, cancel := context.WithTimeout(r.Context(), time.Duration(secs)*time.Second)
		jl, have = s.journals.wait(ctx, machine, unit, now)
		cancel()
	}
	if !have {
		s.fail(w, r, http.StatusNotFound, fmt.Sprintf("logs: %s has sent no journal of %s (its agent sends one for a unit that is down or slow, or when asked with ?fresh=SECONDS)", machine, unit), "machine", machine)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set(api.HeaderLogTime, jl.at.Format(time.RFC3339))
	_, _ = w.Write(jl.text)
}

// replyToEvent answers an accepted event: the journals operators wait
// for, and to a machine that proved itself with its certificate, the API
// pool to pin.
func (s *Server) replyToEvent(w http.ResponseWriter, machine string, how authLevel) {
	rep := api.EventReply{Logs: s.journals.wanted(machine, time.Now().UTC())}
	if name := s.snap.Load().site.APIName; name != "" && how == authCert {
		rep.API = &api.APIPool{Name: name}
		for _, a := range s.ReadyMasters() {
			rep.API.Addrs = append(rep.API.Addrs, a.String())
		}
	}
	if len(rep.Logs) == 0 && rep.API == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(rep)
}
