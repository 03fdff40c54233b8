package builder

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// ModulePath is plinth's own Go module: the stage-1 programs are its
// packages.
const ModulePath = "github.com/plinth-dev/plinth"

// ReleasedSource returns the directory of plinth's own source at version in
// the Go module cache, downloading it through GOPROXY first when it is not
// there (env is added to the process's environment: a mirror's GOPROXY, or
// GOPROXY=off for an offline build). That directory is what a tree would be
// for compiling stage 1, so a plinth installed with `go install …@version`
// builds images with no checkout.
//
// sum is the hash of that version's module the running binary was built
// from (its build info); a download whose hash differs is refused, so the
// stage 1 compiled is the one that belongs to this binary. go itself checks
// the download against the checksum database or GOPRIVATE's rules.
func ReleasedSource(ctx context.Context, version, sum string, env []string) (string, error) {
	ref := ModulePath + "@" + version
	// Outside any module, so that no go.mod or go.work of the caller's
	// working directory takes part.
	tmp, err := os.MkdirTemp("", "plinth-src-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", ref)
	cmd.Dir = tmp
	cmd.Env = append(append(os.Environ(), "GOWORK=off", "GOFLAGS="), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var got struct {
		Dir, Sum, Error string
	}
	// go prints the JSON, with an Error field, on failure too.
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil || got.Error != "" || runErr != nil {
		msg := strings.TrimSpace(got.Error)
		if msg == "" {
			msg = strings.TrimSpace(stderr.String())
		}
		if msg == "" && runErr != nil {
			msg = runErr.Error()
		}
		var ee *exec.Error
		if errors.As(runErr, &ee) {
			msg = "the go command is needed to compile stage 1: " + ee.Error()
		}
		return "", fmt.Errorf("plinth's stage-1 source %s: %s", ref, msg)
	}
	if got.Dir == "" {
		return "", fmt.Errorf("plinth's stage-1 source %s: go mod download named no directory", ref)
	}
	if sum != "" && got.Sum != sum {
		return "", fmt.Errorf("plinth's stage-1 source %s: the module fetched hashes to %s, but this plinth was built from %s; refusing to compile a stage 1 that is not this binary's",
			ref, got.Sum, sum)
	}
	return got.Dir, nil
}
