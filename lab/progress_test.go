package lab

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver"
)

func status(name, state, msg string, fields map[string]string) bootserver.MachineStatus {
	return bootserver.MachineStatus{Name: name, State: state, LastEvent: msg, Fields: fields}
}

// TestAMachineThatKeepsProgressingIsWaitedFor: a slow master whose API
// server finishes one start-up hook after another, each report minutes
// apart, never stalls, however long it takes in all.
func TestAMachineThatKeepsProgressingIsWaitedFor(t *testing.T) {
	p := NewProgress(5 * time.Minute)
	t0 := time.Now()
	for i := 0; i < 60; i++ { // an hour, a new /readyz answer every 4 minutes
		now := t0.Add(time.Duration(i) * time.Minute)
		msg := fmt.Sprintf("plinth-agent: waiting: kube-apiserver not healthy: %d hooks not finished", 60/4-i/4)
		fields := map[string]string{"kube-apiserver.service": "active", "load": fmt.Sprint(i), "memory": fmt.Sprintf("%d/1987 MiB", 900-i)}
		if stalled := p.Observe(now, []string{"master-1"}, []bootserver.MachineStatus{status("master-1", "services", msg, fields)}); len(stalled) != 0 {
			t.Fatalf("after %d minutes: %v stalled, though its report changed within 4 minutes each time", i, stalled)
		}
	}
}

// TestAMachineThatStallsIsNamedAfterStall: heartbeats repeating one report
// (with a changing load and memory), and a crash loop going through the
// same unit states again, are not progress.
func TestAMachineThatStallsIsNamedAfterStall(t *testing.T) {
	p := NewProgress(5 * time.Minute)
	t0 := time.Now()
	loop := []string{"activating", "active", "failed"}
	var stalledAt time.Duration
	for i := 0; i < 20; i++ {
		now := t0.Add(time.Duration(i) * 30 * time.Second)
		ms := []bootserver.MachineStatus{
			status("etcd-1", "ready", "plinth-agent: ready", map[string]string{"etcd.service": "active", "load": fmt.Sprint(i)}),
			status("master-1", "services", "plinth-agent: waiting: kube-apiserver.service is "+loop[i%3],
				map[string]string{"kube-apiserver.service": loop[i%3], "restarts kube-apiserver.service": fmt.Sprint(i), "log kube-apiserver.service": fmt.Sprint("line ", i)}),
		}
		stalled := p.Observe(now, []string{"etcd-1", "master-1", "minion-1"}, ms)
		// minion-1 never reports at all: it stalls too.
		if slices.Contains(stalled, "master-1") && stalledAt == 0 {
			stalledAt = now.Sub(t0)
			if !slices.Equal(stalled, []string{"etcd-1", "master-1", "minion-1"}) {
				t.Errorf("stalled %v", stalled)
			}
		}
	}
	// The loop's last new state was shown at 1 minute (the third report).
	if want := 6 * time.Minute; stalledAt != want {
		t.Errorf("master-1 named stalled after %s, want %s", stalledAt, want)
	}
	if got := p.Since(t0.Add(10*time.Minute), "master-1"); got != 9*time.Minute {
		t.Errorf("Since: %s", got)
	}
}
