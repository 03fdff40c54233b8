package bootserver

import (
	"encoding/json"
	"errors"
	"os"

	"github.com/plinth-dev/plinth/internal/fsutil"
)

// The state directory's small JSON files (the API pool, report and
// enrolment tokens' hashes, enrolled MACs, the last good site) are read
// and written the same way.

// readState fills v from the JSON file at path. A path of "" (no state
// directory) or a missing file leaves v as it is and is no error.
func readState(path string, v any) error {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// writeState writes v as indented JSON to path, atomically; "" writes
// nothing.
func writeState(path string, v any, mode os.FileMode) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path, append(b, '\n'), mode)
}
