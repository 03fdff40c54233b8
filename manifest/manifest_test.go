package manifest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const digestA = "sha256:" + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

func readText(t testing.TB, text string) (*Manifest, error) {
	t.Helper()
	return readIn(t, t.TempDir(), text)
}

func readIn(t testing.TB, dir, text string) (*Manifest, error) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return Read(dir)
}

// A manifest arrives in bundles and mirrors from elsewhere: a file name
// that leaves the artifact directory, a file listed twice or one without a
// digest is refused, naming the entry.
func TestReadRefusesFilesOutsideTheDirectoryOrUnchecked(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{`{"name":"../../etc/passwd","sha256":"` + digestA + `","size":1}`, `files[0].name "../../etc/passwd"`},
		{`{"name":"..","sha256":"` + digestA + `","size":1}`, `files[0].name ".."`},
		{`{"name":"vmlinuz","sha256":"md5:x","size":1}`, `files[0] (vmlinuz).sha256`},
		{`{"name":"vmlinuz","sha256":"` + digestA + `","size":-1}`, `size -1`},
		{`{"name":"a","sha256":"` + digestA + `","size":1},{"name":"a","sha256":"` + digestA + `","size":1}`, `files[1].name "a": listed twice`},
	} {
		_, err := readText(t, `{"schema":1,"name":"img","spec_sha256":"","source_date_epoch":0,"sources":[],"files":[`+tc.file+`]}`)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.file, err, tc.want)
		}
	}
	m, err := readText(t, `{"schema":1,"name":"img","spec_sha256":"","source_date_epoch":0,"sources":[],"files":[{"name":"vmlinuz","sha256":"`+digestA+`","size":3}]}`)
	if err != nil || m.File("vmlinuz") == nil {
		t.Errorf("a good manifest: %v", err)
	}
}

// FuzzRead: whatever Read accepts names only files inside the directory,
// each once with a digest, and survives its own Encode unchanged.
func FuzzRead(f *testing.F) {
	f.Add(`{"schema":1,"name":"img","spec_sha256":"","source_date_epoch":0,"sources":[],"files":[{"name":"vmlinuz","sha256":"` + digestA + `","size":3}]}`)
	f.Add(`{"schema":1,"files":[{"name":"../x","sha256":"` + digestA + `","size":1}]}`)
	f.Add(`{"schema":2}`)
	f.Add(`{"schema":1,"kernel":{"version":"6.1","modules":["a.ko"]}}{}`)
	dir := f.TempDir() // one per worker: a directory per input is slow
	f.Fuzz(func(t *testing.T, text string) {
		m, err := readIn(t, dir, text)
		if err != nil {
			return
		}
		for _, fl := range m.Files {
			if filepath.Base(fl.Name) != fl.Name || fl.Name == ".." || fl.Name == "." {
				t.Fatalf("accepted file name %q", fl.Name)
			}
			if _, err := ParseDigest(fl.SHA256); err != nil || fl.Size < 0 {
				t.Fatalf("accepted %+v", fl)
			}
		}
		b, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		again, err := readIn(t, dir, string(b))
		if err != nil {
			t.Fatalf("its own encoding is refused: %v\n%s", err, b)
		}
		b2, _ := again.Encode()
		if string(b) != string(b2) {
			t.Fatalf("encode, read, encode differs:\n%s\n%s", b, b2)
		}
	})
}
