package kernel

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// maxModule bounds a decompressed module: the largest Debian modules are a
// few tens of MB, so anything far beyond is a broken or hostile file.
const maxModule = 256 << 20

// readModinfo returns the .modinfo section of a module file,
// decompressing .ko.xz/.ko.zst/.ko.gz.
func readModinfo(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ra io.ReaderAt = f
	if compressed(path) {
		b, err := decompress(path, f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		ra = bytes.NewReader(b)
	}
	info, err := modinfoSection(ra)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return info, nil
}

// readModinfoDepends returns the "depends=" list of a module file's
// .modinfo section (canonical names, sorted).
func readModinfoDepends(path string) ([]string, error) {
	info, err := readModinfo(path)
	if err != nil {
		return nil, err
	}
	return parseModinfoDepends(info), nil
}

func compressed(path string) bool { return !strings.HasSuffix(path, ".ko") }

// decompress returns the ELF bytes of a compressed module, at most maxModule.
func decompress(path string, r io.Reader) ([]byte, error) {
	var dec io.Reader
	switch {
	case strings.HasSuffix(path, ".ko.xz"):
		x, err := xz.NewReader(r)
		if err != nil {
			return nil, err
		}
		dec = x
	case strings.HasSuffix(path, ".ko.zst"):
		z, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxModule))
		if err != nil {
			return nil, err
		}
		defer z.Close()
		dec = z
	case strings.HasSuffix(path, ".ko.gz"):
		g, err := gzip.NewReader(r)
		if err != nil {
			return nil, err
		}
		dec = g
	default:
		return nil, fmt.Errorf("unknown module compression")
	}
	b, err := io.ReadAll(io.LimitReader(dec, maxModule+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxModule {
		return nil, fmt.Errorf("more than %d bytes decompressed", maxModule)
	}
	return b, nil
}

// modinfoSection returns the contents of the ELF .modinfo section.
func modinfoSection(ra io.ReaderAt) ([]byte, error) {
	ef, err := elf.NewFile(ra)
	if err != nil {
		return nil, fmt.Errorf("not an ELF module: %w", err)
	}
	defer ef.Close()
	s := ef.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("no .modinfo section")
	}
	if s.Size > maxModule {
		return nil, fmt.Errorf(".modinfo of %d bytes", s.Size)
	}
	b, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf(".modinfo: %w", err)
	}
	return b, nil
}

// parseModinfoDepends reads "depends=a,b" from a .modinfo section. A
// module may carry the key once, empty.
func parseModinfoDepends(info []byte) []string {
	var deps []string
	for _, v := range modinfoValues(info, "depends") {
		for d := range strings.SplitSeq(v, ",") {
			deps = append(deps, canon(strings.TrimSpace(d)))
		}
	}
	return sortedUnique(deps)
}

// modinfoValues returns every value of key in a .modinfo section (NUL
// separated key=value strings), in order.
func modinfoValues(info []byte, key string) []string {
	var out []string
	prefix := []byte(key + "=")
	for kv := range bytes.SplitSeq(info, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, prefix); ok {
			out = append(out, string(v))
		}
	}
	return out
}
