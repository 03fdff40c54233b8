package builder

import "io"

// Progress shows long steps to a person. Start begins a step; total is its
// size in bytes, or -1 when unknown.
type Progress interface {
	Start(step string, total int64) Tracker
}

// Tracker follows one step.
type Tracker interface {
	Add(n int64)
	Done()
}

type nopProgress struct{}

func (nopProgress) Start(string, int64) Tracker { return nopTracker{} }

type nopTracker struct{}

func (nopTracker) Add(int64) {}
func (nopTracker) Done()     {}

// progressWriter counts bytes written through it into a Tracker.
type progressWriter struct {
	w io.Writer
	t Tracker
}

func (p progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.t.Add(int64(n))
	return n, err
}
