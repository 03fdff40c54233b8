package qemutests

import (
	"bufio"
	"context"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/lab/qemu"
)

// conformanceVersion is the Kubernetes whose suite the stack fixtures build.
const conformanceVersion = "v1.35.4"

// TestConformance runs Kubernetes' own conformance tests (e2e.test of
// conformanceVersion, built by qemu-tests/fixtures/stack/conformance.sh) against
// the lab: one etcd member, a master and two minions whose image also carries
// the suite's test images, so nothing is pulled. make conformance.
// PLINTH_CONFORMANCE_FOCUS narrows the run (a regular expression; default
// every [Conformance] test); qemu-tests/conformance/skip.txt lists the tests
// the lab does not run, each with its reason. The JUnit report and the
// suite's log go to build/conformance/.
func TestConformance(t *testing.T) {
	if os.Getenv("PLINTH_CONFORMANCE") == "" {
		t.Skip("Kubernetes' conformance suite on the lab: make conformance (PLINTH_CONFORMANCE=1)")
	}
	e2e := filepath.Join(fixtures, "bin", "conformance-"+conformanceVersion, "e2e.test")
	layer := filepath.Join(fixtures, "oci")
	need(t, e2e)
	kubectlBin := stackBinary(t, "kubectl")
	focus := os.Getenv("PLINTH_CONFORMANCE_FOCUS")
	if focus == "" {
		focus = `\[Conformance\]`
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Hour)
	defer cancel()
	skips, err := readSkips(filepath.Join(srcDir, "qemu-tests", "conformance", "skip.txt"), qemu.Accel(ctx))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(srcDir, "build", "conformance")
	os.RemoveAll(out)
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}

	// Every conformance test of the suite, by name, before anything boots.
	names := conformanceNames(t, e2e)
	t.Logf("figure: %d [Conformance] tests in Kubernetes %s", len(names), conformanceVersion)

	// The minion image with the suite's images baked in: the stock spec
	// plus one layer.
	b, err := os.ReadFile(filepath.Join(srcDir, "images", "minion.toml"))
	if err != nil {
		t.Fatal(err)
	}
	spec := strings.ReplaceAll(string(b), "../build/", filepath.Join(srcDir, "build")+"/") +
		"\n[[layer]]\nsource = \"oci:" + layer + ":conformance-images\"\n"
	specFile := filepath.Join(t.TempDir(), "minion.toml")
	writeFile(t, specFile, spec)
	sc := upScenarioWith(t, ctx, scenarioOpts{
		specs: []string{filepath.Join(srcDir, "images", "etcd.toml"), filepath.Join(srcDir, "images", "master.toml"), specFile},
		// Both minions keep containerd's images on a disk, not in RAM, and
		// have room for the suite's pods.
		site:   func(s string) string { return strings.Replace(s, "state   = { disk = \"none\" }\n", "", 1) },
		memory: 2560,
		// Two vCPUs each: with one, the minions were ready 1282-1321 s
		// after QEMU start (importing the suite's images), with two 919-1142 s.
		cpus: 2,
	}, "conformance", "etcd-1", "master-1", "minion-1", "minion-2")
	l := sc.c.Lab
	master := sc.ofRole("master")[0]
	// e2e.test reaches the master by its address (in its certificate).
	kb, err := os.ReadFile(filepath.Join(sc.cred, "kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	// Admin credentials: kept out of build/, which outlives the test.
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	writeFile(t, kubeconfig, regexp.MustCompile(`(?m)^(\s*server:).*$`).ReplaceAllString(string(kb), "${1} https://"+ip(master)+":6443"))
	kubectl := func(args ...string) (string, error) {
		return inLab(ctx, l, kubectlBin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	}
	waitFor(t, ctx, "both minions Ready and CoreDNS's replicas ready", func() bool {
		out, err := kubectl("get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}")
		if err != nil || !strings.Contains(out, "minion-1=True") || !strings.Contains(out, "minion-2=True") {
			return false
		}
		out, err = kubectl("-n", "kube-system", "get", "deployment", "coredns", "-o", "jsonpath={.status.readyReplicas}")
		return err == nil && out == "2"
	})
	// The aggregation layer the suite's Aggregator test uses, and who may
	// speak for a caller through it.
	sc.frontProxyOnly(t, ctx, master)

	var skipRes []string
	for _, s := range skips {
		skipRes = append(skipRes, s.re)
	}
	args := []string{"netns", "exec", l.Name(), e2e,
		"--kubeconfig=" + kubeconfig, "--provider=skeleton", "--kubectl-path=" + kubectlBin,
		"--report-dir=" + out, "--ginkgo.focus=" + focus, "--ginkgo.no-color", "--ginkgo.v",
		"--ginkgo.timeout=9h", "--ginkgo.flake-attempts=1", "--disable-log-dump"}
	if len(skipRes) > 0 {
		args = append(args, "--ginkgo.skip="+strings.Join(skipRes, "|"))
	}
	logf, err := os.Create(filepath.Join(out, "e2e.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	start := time.Now()
	t.Logf("running e2e.test (focus %s, %d skip patterns); its log: %s", focus, len(skipRes), logf.Name())
	runErr := cmd.Run()
	took := time.Since(start)

	rep, err := readJUnit(filepath.Join(out, "junit_01.xml"))
	if err != nil {
		t.Fatalf("e2e.test: %v; no JUnit report: %v (see %s)", runErr, err, logf.Name())
	}
	sum := summarize(rep, names, regexp.MustCompile(focus), skips)
	t.Logf("figure: conformance under %s: %s", took.Round(time.Second), sum.line())
	for _, s := range skips {
		if n := sum.skippedBy[s.reason]; n > 0 {
			t.Logf("skipped %d: %s", n, s.reason)
		}
	}
	for _, f := range sum.failed {
		t.Errorf("FAILED: %s", f)
	}
	if err := os.WriteFile(filepath.Join(out, "summary.txt"), []byte(sum.text(took, skips)), 0o644); err != nil {
		t.Error(err)
	}
	if runErr != nil && len(sum.failed) == 0 {
		t.Errorf("e2e.test: %v with no failed test in its report (see %s)", runErr, logf.Name())
	}
}

// skip is one pattern of qemu-tests/conformance/skip.txt.
type skip struct {
	reason, re string
	m          *regexp.Regexp // re, compiled
}

// readSkips reads the skip list for a lab running under accel ("kvm" or
// "tcg"): a group whose reason starts "[kvm] " or "[tcg] " applies only
// under that accelerator.
func readSkips(path, accel string) ([]skip, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var (
		out    []skip
		reason string
		n      int
		apply  bool // the group applies under accel
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "## "):
			reason, apply = strings.TrimSpace(line[3:]), true
			if a, ok := strings.CutPrefix(reason, "["); ok {
				a, _, ok = strings.Cut(a, "] ")
				if !ok || (a != "kvm" && a != "tcg") {
					return nil, fmt.Errorf("%s:%d: a reason starting \"[\" names an accelerator: \"[kvm] \" or \"[tcg] \"", path, n)
				}
				apply = a == accel
			}
		case line == "" || strings.HasPrefix(line, "#"):
		case reason == "":
			return nil, fmt.Errorf("%s:%d: a pattern before any \"## reason\" line", path, n)
		default:
			m, err := regexp.Compile(line)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %v", path, n, err)
			}
			if apply {
				out = append(out, skip{reason, line, m})
			}
		}
	}
	return out, sc.Err()
}

// conformanceNames lists the suite's [Conformance] tests by their full
// names (a dry run runs nothing and needs no cluster).
func conformanceNames(t *testing.T, e2e string) []string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(e2e, "--ginkgo.dry-run", "--ginkgo.focus=\\[Conformance\\]", "--report-dir="+dir, "--ginkgo.no-color")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("e2e.test --ginkgo.dry-run: %v\n%s", err, tail(out, 2000))
	}
	rep, err := readJUnit(filepath.Join(dir, "junit_01.xml"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range rep.cases() {
		if strings.Contains(c.Name, "[Conformance]") {
			names = append(names, c.Name)
		}
	}
	if len(names) == 0 {
		t.Fatal("the dry run listed no [Conformance] test")
	}
	return names
}

type junitReport struct {
	Suites []struct {
		Cases []junitCase `xml:"testcase"`
	} `xml:"testsuite"`
}

type junitCase struct {
	Name    string    `xml:"name,attr"`
	Status  string    `xml:"status,attr"`
	Time    float64   `xml:"time,attr"`
	Skipped *struct{} `xml:"skipped"`
	Failure *struct {
		Text string `xml:",chardata"`
	} `xml:"failure"`
	Error *struct{} `xml:"error"`
}

func (r *junitReport) cases() []junitCase {
	var out []junitCase
	for _, s := range r.Suites {
		out = append(out, s.Cases...)
	}
	return out
}

func readJUnit(path string) (*junitReport, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r junitReport
	if err := xml.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

// conformanceSummary counts a run's conformance tests.
type conformanceSummary struct {
	total, inFocus, ran, passed int
	failed                      []string
	skippedBy                   map[string]int // by skip.txt's reason
	notInFocus                  int
}

func summarize(rep *junitReport, names []string, focus *regexp.Regexp, skips []skip) conformanceSummary {
	s := conformanceSummary{total: len(names), skippedBy: map[string]int{}}
	byName := map[string]junitCase{}
	for _, c := range rep.cases() {
		byName[c.Name] = c
	}
	for _, n := range names {
		if !focus.MatchString(n) {
			s.notInFocus++
			continue
		}
		s.inFocus++
		if i := slices.IndexFunc(skips, func(sk skip) bool { return sk.m.MatchString(n) }); i >= 0 {
			s.skippedBy[skips[i].reason]++
			continue
		}
		c, ok := byName[n]
		switch {
		case !ok || c.Skipped != nil:
			s.skippedBy["skipped by the suite itself (see e2e.log)"]++
		case c.Failure != nil || c.Error != nil:
			s.ran++
			s.failed = append(s.failed, n)
		default:
			s.ran++
			s.passed++
		}
	}
	return s
}

func (s conformanceSummary) line() string {
	skipped := 0
	for _, n := range s.skippedBy {
		skipped += n
	}
	return fmt.Sprintf("%d [Conformance] tests, %d in focus: ran %d, passed %d, failed %d, skipped %d (%d outside the focus)",
		s.total, s.inFocus, s.ran, s.passed, len(s.failed), skipped, s.notInFocus)
}

func (s conformanceSummary) text(took time.Duration, skips []skip) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Kubernetes %s conformance on the plinth QEMU lab, %s\n%s\n", conformanceVersion, took.Round(time.Second), s.line())
	reasons := []string{}
	for _, sk := range skips {
		if !slices.Contains(reasons, sk.reason) {
			reasons = append(reasons, sk.reason)
		}
	}
	reasons = append(reasons, "skipped by the suite itself (see e2e.log)")
	for _, r := range reasons {
		if n := s.skippedBy[r]; n > 0 {
			fmt.Fprintf(&b, "skipped %d: %s\n", n, r)
		}
	}
	for _, f := range s.failed {
		fmt.Fprintf(&b, "FAILED: %s\n", f)
	}
	return b.String()
}

// The skip list in the tree parses: every pattern compiles and has a reason.
func TestConformanceSkipListParses(t *testing.T) {
	for _, accel := range []string{"kvm", "tcg"} {
		if _, err := readSkips(filepath.Join(srcDir, "qemu-tests", "conformance", "skip.txt"), accel); err != nil {
			t.Fatal(err)
		}
	}
	good := filepath.Join(t.TempDir(), "skip.txt")
	writeFile(t, good, "# a comment\n## a reason\nsome test\n\n## another\nx \\[y\\]\n## [tcg] slow\nslow test\n")
	if skips, err := readSkips(good, "kvm"); err != nil || len(skips) != 2 || skips[1].reason != "another" || !skips[1].m.MatchString("a x [y] z") {
		t.Errorf("under kvm, two patterns under two reasons: %+v, %v", skips, err)
	}
	if skips, err := readSkips(good, "tcg"); err != nil || len(skips) != 3 || skips[2].reason != "[tcg] slow" || !skips[2].m.MatchString("a slow test") {
		t.Errorf("under tcg, the [tcg] group too: %+v, %v", skips, err)
	}
	for _, c := range []struct{ text, line string }{
		{"# a comment\nsome test\n", "skip.txt:2:"},   // a pattern without a reason
		{"## [qemu] why\nsome test\n", "skip.txt:1:"}, // no such accelerator
		{"## [tcg]why\nsome test\n", "skip.txt:1:"},   // no space after the bracket
		{"## why\nsome (test\n", "skip.txt:2:"},       // not a regular expression
	} {
		bad := filepath.Join(t.TempDir(), "skip.txt")
		writeFile(t, bad, c.text)
		if _, err := readSkips(bad, "tcg"); err == nil || !strings.Contains(err.Error(), c.line) {
			t.Errorf("%q: %v, want an error naming %s", c.text, err, c.line)
		}
	}
}
