package testutil

import (
	"testing"

	"github.com/plinth-dev/plinth/bootserver/pki"
)

// NewCA is a new site CA in a temporary directory: each call a different
// CA, for tests that need the site's and an impostor's.
func NewCA(t testing.TB) *pki.CA {
	t.Helper()
	ca, _, err := pki.LoadOrCreate(t.TempDir(), "lab", nil)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}
