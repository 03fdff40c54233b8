package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Mark is one successful Expect: its pattern and when the matched text
// arrived, measured from QEMU's start.
type Mark struct {
	Pattern string
	At      time.Duration
}

// chunk records that console bytes up to end arrived at at.
type chunk struct {
	end int
	at  time.Duration
}

// settle is how long a line without its newline must stay unchanged before
// Expect matches against it: a pattern such as `host=(\S+)` must not match
// half a word that QEMU wrote in two pieces, but a prompt ("login: ") that
// never gets a newline must still match.
const settle = 500 * time.Millisecond

// ErrExited is returned by Expect when QEMU stopped before the match.
var ErrExited = errors.New("qemu exited")

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func (v *VM) write(b []byte) (int, error) {
	v.mu.Lock()
	v.console = append(v.console, b...)
	v.chunks = append(v.chunks, chunk{end: len(v.console), at: time.Since(v.start)})
	v.mu.Unlock()
	v.poke()
	return len(b), nil
}

func (v *VM) poke() {
	select {
	case v.changed <- struct{}{}:
	default:
	}
}

// Console returns everything the machine printed so far.
func (v *VM) Console() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return string(v.console)
}

// Tail returns the console's last n lines.
func (v *VM) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(v.Console(), "\r\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Expect waits until the console, from just after the previous Expect's
// match (from the start for the first), matches re, moves past the match and
// returns the submatches. Use it for a sequence of events that must happen
// in order. It fails when ctx is done or QEMU exits first; the error says
// how long it waited and ends with the console's last 40 lines. Call
// Expect and ExpectFromStart from one goroutine per VM: they share one
// wake-up signal.
func (v *VM) Expect(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	return v.expect(ctx, re, false)
}

// ExpectFromStart is Expect searching the whole console from QEMU's start,
// whatever was matched before; it leaves the position where Expect resumes
// unchanged. Use it for an event whose order does not matter.
func (v *VM) ExpectFromStart(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	return v.expect(ctx, re, true)
}

func (v *VM) expect(ctx context.Context, re *regexp.Regexp, fromStart bool) ([]string, error) {
	began := time.Now()
	var recheck <-chan time.Time // set while a partial line waits to settle
	for {
		exited := v.Exited() // read before matching: after exit the console is complete
		m, wait := v.match(re, fromStart, exited)
		if m != nil {
			return m, nil
		}
		if exited {
			return nil, v.expectErr(re, began, fmt.Errorf("%w (%v)", ErrExited, v.exitErr()))
		}
		if wait > 0 {
			recheck = time.After(wait)
		}
		select {
		case <-v.changed:
		case <-v.done:
		case <-recheck:
			recheck = nil
		case <-ctx.Done():
			return nil, v.expectErr(re, began, ctx.Err())
		}
	}
}

// match looks for re in the console. Text after the last newline is
// searched only when all is set or it has settled; otherwise wait says how
// long until it will have.
func (v *VM) match(re *regexp.Regexp, fromStart, all bool) (m []string, wait time.Duration) {
	v.mu.Lock()
	defer v.mu.Unlock()
	begin := v.cursor
	if fromStart {
		begin = 0
	}
	text := v.console[begin:]
	end := len(text)
	if !all && len(v.chunks) > 0 {
		if age := time.Since(v.start) - v.chunks[len(v.chunks)-1].at; age < settle {
			if nl := bytes.LastIndexByte(text, '\n'); nl+1 < end {
				end = nl + 1
				wait = settle - age
			}
		}
	}
	loc := re.FindSubmatchIndex(text[:end])
	if loc == nil {
		return nil, wait
	}
	m = make([]string, len(loc)/2)
	for i := range m {
		if loc[2*i] >= 0 {
			m[i] = string(text[loc[2*i]:loc[2*i+1]])
		}
	}
	last := begin + loc[1] // the match is complete once this byte arrived
	k := sort.Search(len(v.chunks), func(i int) bool { return v.chunks[i].end >= last })
	at := time.Since(v.start)
	if k < len(v.chunks) {
		at = v.chunks[k].at
	}
	v.marks = append(v.marks, Mark{Pattern: re.String(), At: at})
	if !fromStart {
		v.cursor = last
	}
	return m, 0
}

func (v *VM) expectErr(re *regexp.Regexp, began time.Time, cause error) error {
	return fmt.Errorf("%s: waited %s for %q (%s since QEMU start): %w; console's last lines:\n%s",
		v.cfg.Name, time.Since(began).Round(time.Millisecond), re, time.Since(v.start).Round(time.Millisecond), cause, v.Tail(40))
}

// Since is when the text of the last successful Expect arrived, measured
// from QEMU's start: the figure to report for "reached X after N s".
func (v *VM) Since() time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.marks) == 0 {
		return 0
	}
	return v.marks[len(v.marks)-1].At
}

// Marks lists every successful Expect in the order they returned.
func (v *VM) Marks() []Mark {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]Mark(nil), v.marks...)
}

// Uptime is the time since QEMU started.
func (v *VM) Uptime() time.Duration { return time.Since(v.start) }
