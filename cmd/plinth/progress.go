package main

import (
	"io"

	"github.com/schollz/progressbar/v3"

	"github.com/plinth-dev/plinth/builder"
)

// termProgress draws one progress bar per long step on a terminal.
type termProgress struct{ w io.Writer }

func newTermProgress(w io.Writer) builder.Progress { return termProgress{w} }

func (p termProgress) Start(step string, total int64) builder.Tracker {
	bar := progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(p.w),
		progressbar.OptionSetDescription(step),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSpinnerType(14),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionThrottle(100_000_000),
	)
	return barTracker{bar}
}

type barTracker struct{ b *progressbar.ProgressBar }

func (t barTracker) Add(n int64) { _ = t.b.Add64(n) }
func (t barTracker) Done()       { _ = t.b.Finish() }
