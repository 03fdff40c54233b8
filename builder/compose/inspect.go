package compose

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Entry is one file of an initramfs, as the kernel would unpack it.
type Entry struct {
	Part        int    // which part of the file: a compressed stream or a raw archive
	PartOffset  int64  // where that part starts in the file
	Compression string // "zstd", "gzip", or "" for a raw (uncompressed) archive
	Archive     int    // which newc archive of the part (a stream may hold several)
	Name        string
	Mode        fs.FileMode
	Size        int64
	Linkname    string // a symlink's target
	UID, GID    int
	ModTime     time.Time
	DataOffset  int64 // where the contents start in the file, for raw parts; -1 in compressed parts
}

// Inspect lists the entries of every part of the initramfs at path, in
// order. It reads the file the way the kernel does (init/initramfs.c):
// compressed streams and raw newc archives one after another, NUL padding
// between them, a raw archive only at a 4-byte-aligned offset.
func Inspect(path string) ([]Entry, error) {
	var out []Entry
	err := Walk(path, func(e Entry, _ io.Reader) error {
		out = append(out, e)
		return nil
	})
	return out, err
}

// Walk calls fn for every entry of the initramfs at path, with a reader of
// its contents valid until fn returns.
func Walk(path string, fn func(Entry, io.Reader) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := walk(f, st.Size(), fn); err != nil {
		return fmt.Errorf("initramfs %s: %w", path, err)
	}
	return nil
}

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

func walk(ra io.ReaderAt, size int64, fn func(Entry, io.Reader) error) error {
	var head [4]byte
	part := 0
	for pos := int64(0); pos < size; {
		n, err := ra.ReadAt(head[:], pos)
		if n == 0 {
			return fmt.Errorf("offset %d: %w", pos, err)
		}
		h := head[:n]
		p := Entry{Part: part, PartOffset: pos, DataOffset: -1}
		switch {
		case h[0] == 0:
			pos = skipZeros(ra, pos, size)
			continue
		case h[0] == '0':
			if pos%4 != 0 {
				return fmt.Errorf("offset %d: raw archive not 4-byte aligned (the kernel stops with \"broken padding\")", pos)
			}
			sr := io.NewSectionReader(ra, pos, size-pos)
			s := &stream{br: bufio.NewReader(sr), sr: sr, pos: pos}
			if err := s.archive(p, fn); err != nil {
				return err
			}
			pos = s.pos
		case bytes.HasPrefix(h, zstdMagic):
			end, err := zstdEnd(ra, pos, size)
			if err != nil {
				return fmt.Errorf("offset %d: %w", pos, err)
			}
			d, err := zstd.NewReader(io.NewSectionReader(ra, pos, end-pos), zstd.WithDecoderConcurrency(1))
			if err != nil {
				return err
			}
			p.Compression = "zstd"
			err = archives(d, p, fn)
			d.Close()
			if err != nil {
				return err
			}
			pos = end
		case bytes.HasPrefix(h, gzipMagic):
			// flate reads a ByteReader byte by byte, never beyond the end of
			// the stream, so counting what it reads finds the next part.
			cr := &countingReader{br: bufio.NewReader(io.NewSectionReader(ra, pos, size-pos))}
			z, err := gzip.NewReader(cr)
			if err != nil {
				return fmt.Errorf("offset %d: %w", pos, err)
			}
			z.Multistream(false)
			p.Compression = "gzip"
			if err := archives(z, p, fn); err != nil {
				return err
			}
			pos += cr.n
		default:
			return fmt.Errorf("offset %d: neither a newc archive nor a zstd or gzip stream (% x)", pos, h)
		}
		part++
	}
	return nil
}

func skipZeros(ra io.ReaderAt, pos, size int64) int64 {
	buf := make([]byte, 4096)
	for pos < size {
		n, _ := ra.ReadAt(buf, pos)
		if n == 0 {
			return size
		}
		for i, c := range buf[:n] {
			if c != 0 {
				return pos + int64(i)
			}
		}
		pos += int64(n)
	}
	return pos
}

// archives reads the newc archives of one decompressed stream.
func archives(r io.Reader, p Entry, fn func(Entry, io.Reader) error) error {
	s := &stream{br: bufio.NewReaderSize(r, 64<<10)}
	for {
		for {
			b, err := s.br.Peek(1)
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("part %d (%s): %w", p.Part, p.Compression, err)
			}
			if b[0] != 0 {
				break
			}
			s.br.Discard(1)
			s.pos++
		}
		if s.pos%4 != 0 {
			return fmt.Errorf("part %d (%s): archive at %d not 4-byte aligned", p.Part, p.Compression, s.pos)
		}
		if err := s.archive(p, fn); err != nil {
			return err
		}
		p.Archive++
	}
}

// stream reads newc archives, counting the offset for the alignment rules.
type stream struct {
	br  *bufio.Reader
	sr  *io.SectionReader // the source of br, for raw parts: contents are skipped by seeking
	pos int64             // the file offset for raw parts, else the offset in the stream
}

func (s *stream) Read(b []byte) (int, error) {
	n, err := s.br.Read(b)
	s.pos += int64(n)
	return n, err
}

func (s *stream) skip(n int64) error {
	if s.sr != nil && n > int64(s.br.Buffered()) {
		n -= int64(s.br.Buffered())
		s.pos += int64(s.br.Buffered())
		s.br.Discard(s.br.Buffered())
		cur, err := s.sr.Seek(0, io.SeekCurrent)
		if err != nil {
			return err
		}
		if cur+n > s.sr.Size() {
			return io.ErrUnexpectedEOF
		}
		if _, err := s.sr.Seek(n, io.SeekCurrent); err != nil {
			return err
		}
		s.br.Reset(s.sr)
		s.pos += n
		return nil
	}
	m, err := io.CopyN(io.Discard, s, n)
	if err == io.EOF && m < n {
		err = io.ErrUnexpectedEOF
	}
	return err
}

func (s *stream) pad() error { return s.skip((4 - s.pos%4) % 4) }

const (
	newcHeaderLen = 110
	maxName       = 4096 // PATH_MAX: the kernel refuses longer names
	trailer       = "TRAILER!!!"
)

// archive reads one newc archive, up to and including its trailer.
func (s *stream) archive(p Entry, fn func(Entry, io.Reader) error) error {
	var hdr [newcHeaderLen]byte
	for {
		at := s.pos
		if _, err := io.ReadFull(s, hdr[:]); err != nil {
			return fmt.Errorf("part %d: header at %d: %w", p.Part, at, noEOF(err))
		}
		if m := string(hdr[:6]); m != "070701" && m != "070702" {
			return fmt.Errorf("part %d: header at %d: magic %q, want newc 070701", p.Part, at, m)
		}
		var f [13]uint64
		for i := range f {
			v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				return fmt.Errorf("part %d: header at %d: field %d: %w", p.Part, at, i, err)
			}
			f[i] = v
		}
		mode, uid, gid, mtime, size, namesize := f[1], f[2], f[3], f[5], int64(f[6]), f[11]
		if namesize == 0 || namesize > maxName {
			return fmt.Errorf("part %d: header at %d: name size %d", p.Part, at, namesize)
		}
		name := make([]byte, namesize)
		if _, err := io.ReadFull(s, name); err != nil {
			return fmt.Errorf("part %d: name at %d: %w", p.Part, at, noEOF(err))
		}
		if name[namesize-1] != 0 {
			return fmt.Errorf("part %d: header at %d: name not NUL-terminated", p.Part, at)
		}
		if err := s.pad(); err != nil {
			return fmt.Errorf("part %d: header at %d: %w", p.Part, at, err)
		}
		e := p
		e.Name = string(name[:namesize-1])
		if e.Name == trailer {
			return s.skip(size)
		}
		e.Mode, e.UID, e.GID, e.Size = fileMode(uint32(mode)), int(uid), int(gid), size
		e.ModTime = time.Unix(int64(mtime), 0).UTC()
		if s.sr != nil {
			e.DataOffset = s.pos
			if end := p.PartOffset + s.sr.Size(); e.DataOffset+size > end {
				return fmt.Errorf("part %d: %s: %d bytes at %d: %w", p.Part, e.Name, size, e.DataOffset, io.ErrUnexpectedEOF)
			}
		}
		data := io.LimitReader(s, size)
		if e.Mode&fs.ModeSymlink != 0 && size <= maxName {
			b, err := io.ReadAll(data)
			if err != nil {
				return fmt.Errorf("part %d: %s: %w", p.Part, e.Name, err)
			}
			e.Linkname = string(b)
			data = bytes.NewReader(b)
		}
		if err := fn(e, data); err != nil {
			return err
		}
		if lr, ok := data.(*io.LimitedReader); ok && lr.N > 0 {
			if err := s.skip(lr.N); err != nil {
				return fmt.Errorf("part %d: %s: %w", p.Part, e.Name, err)
			}
		}
		if err := s.pad(); err != nil {
			return fmt.Errorf("part %d: %s: %w", p.Part, e.Name, err)
		}
	}
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// fileMode converts a cpio c_mode (st_mode bits) to an fs.FileMode.
func fileMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	switch m & 0o170000 {
	case 0o040000:
		mode |= fs.ModeDir
	case 0o120000:
		mode |= fs.ModeSymlink
	case 0o020000:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case 0o060000:
		mode |= fs.ModeDevice
	case 0o010000:
		mode |= fs.ModeNamedPipe
	case 0o140000:
		mode |= fs.ModeSocket
	}
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

// countingReader counts the bytes a decompressor took.
type countingReader struct {
	br *bufio.Reader
	n  int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.br.Read(b)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) ReadByte() (byte, error) {
	b, err := c.br.ReadByte()
	if err == nil {
		c.n++
	}
	return b, err
}

// zstdEnd returns where the run of zstd frames (and skippable frames)
// starting at pos ends, walking frame and block headers (RFC 8878) without
// decompressing: the decoder reads ahead, so it cannot say.
func zstdEnd(ra io.ReaderAt, pos, size int64) (int64, error) {
	var b [18]byte
	read := func(off int64, n int) ([]byte, error) {
		if off+int64(n) > size {
			return nil, fmt.Errorf("zstd frame truncated at %d", off)
		}
		if _, err := ra.ReadAt(b[:n], off); err != nil {
			return nil, noEOF(err)
		}
		return b[:n], nil
	}
	for pos+4 <= size {
		m, err := read(pos, 4)
		if err != nil {
			return 0, err
		}
		magic := binary.LittleEndian.Uint32(m)
		switch {
		case magic&0xfffffff0 == 0x184d2a50: // skippable frame
			h, err := read(pos+4, 4)
			if err != nil {
				return 0, err
			}
			pos += 8 + int64(binary.LittleEndian.Uint32(h))
			continue
		case magic != 0xfd2fb528:
			return pos, nil
		}
		pos += 4
		d, err := read(pos, 1)
		if err != nil {
			return 0, err
		}
		fhd := d[0]
		single := fhd&0x20 != 0
		hdr := int64(1)
		if !single {
			hdr++ // window descriptor
		}
		hdr += [4]int64{0, 1, 2, 4}[fhd&3]
		switch fcs := fhd >> 6; {
		case fcs == 0 && single:
			hdr++
		case fcs > 0:
			hdr += [4]int64{0, 2, 4, 8}[fcs]
		}
		pos += hdr
		for {
			bh, err := read(pos, 3)
			if err != nil {
				return 0, err
			}
			v := uint32(bh[0]) | uint32(bh[1])<<8 | uint32(bh[2])<<16
			last, typ, bsize := v&1 != 0, (v>>1)&3, int64(v>>3)
			pos += 3
			switch typ {
			case 0, 2:
				pos += bsize
			case 1:
				pos++
			default:
				return 0, fmt.Errorf("zstd reserved block type at %d", pos-3)
			}
			if last {
				break
			}
		}
		if fhd&0x04 != 0 {
			pos += 4 // content checksum
		}
	}
	if pos > size {
		return 0, fmt.Errorf("zstd frame truncated at %d", size)
	}
	return pos, nil
}
