package disk

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
)

// file is one file to put on a medium: from a path on the host or bytes.
type file struct {
	name string // on the medium, slash-separated, relative
	src  string
	data []byte
}

func (f file) size() (int64, error) {
	if f.src == "" {
		return int64(len(f.data)), nil
	}
	st, err := os.Stat(f.src)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func (f file) open() (io.ReadCloser, error) {
	if f.src == "" {
		return io.NopCloser(bytes.NewReader(f.data)), nil
	}
	return os.Open(f.src)
}

// fatTime is the timestamp of every FAT entry: FAT cannot store dates before
// 1980, so an earlier epoch (the default, 0) is clamped.
func fatTime(epoch time.Time) time.Time {
	min := time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	if epoch.Before(min) {
		return min
	}
	return epoch.UTC()
}

// writeFAT makes a FAT file system of type fstype on partition part of d
// (0: the whole image) and copies files into it, directories first, every
// entry stamped with the epoch.
func writeFAT(ctx context.Context, d *disk.Disk, part int, fstype filesystem.Type, label string, files []file, epoch time.Time) error {
	fs, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: part, FSType: fstype, VolumeLabel: label, Reproducible: true})
	if err != nil {
		return fmt.Errorf("mkfs %v: %w", fstype, err)
	}
	// go-diskfs stamps the entries it makes itself (the label, "." and ".."
	// of each directory) with SOURCE_DATE_EPOCH from the environment, or the
	// wall clock. Setting that variable would change the whole process's
	// environment under its other goroutines; instead every entry is stamped
	// with Chtimes, which reaches all of them by name. The label first, while
	// the root holds nothing else that could share its name.
	t := fatTime(epoch)
	if err := fs.Chtimes("/"+labelEntryName(label), t, t, t); err != nil {
		return fmt.Errorf("chtimes label: %w", err)
	}
	var dirs []string
	for _, f := range files {
		for dir := path.Dir(f.name); dir != "."; dir = path.Dir(dir) {
			if !slices.Contains(dirs, dir) {
				dirs = append(dirs, dir)
			}
		}
	}
	slices.Sort(dirs) // parents before children
	for _, dir := range dirs {
		if err := fs.Mkdir("/" + dir); err != nil {
			return fmt.Errorf("mkdir %s: %w", dir, err)
		}
	}
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := copyInto(fs, f); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	for _, name := range append(dirs, names(files)...) {
		if err := fs.Chtimes("/"+name, t, t, t); err != nil {
			return fmt.Errorf("chtimes %s: %w", name, err)
		}
	}
	for _, dir := range dirs {
		if err := fs.Chtimes("/"+dir+"/.", t, t, t); err != nil {
			return fmt.Errorf("chtimes %s/.: %w", dir, err)
		}
		// ".." copies its parent's entry, and the root has none: go-diskfs
		// leaves the creation and access times of a top-level directory's
		// ".." zero. Kept so, to write the bytes it always wrote.
		created := t
		if path.Dir(dir) == "." {
			created = time.Time{}
		}
		if err := fs.Chtimes("/"+dir+"/..", created, created, t); err != nil {
			return fmt.Errorf("chtimes %s/..: %w", dir, err)
		}
	}
	return nil
}

// labelEntryName is the name under which go-diskfs finds the volume label's
// entry in the root directory: the label as it pads it to 8.3, with a dot.
func labelEntryName(label string) string {
	if label == "" {
		label = "NO NAME" // go-diskfs's default
	}
	l := fmt.Sprintf("%-11.11s", label)
	name, ext := strings.TrimRight(l[:8], " "), strings.TrimRight(l[8:], " ")
	if ext == "" {
		return name
	}
	return name + "." + ext
}

func copyInto(fs filesystem.FileSystem, f file) error {
	in, err := f.open()
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := fs.OpenFile("/"+f.name, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return err
	}
	// Few large writes: go-diskfs walks the cluster chain and rewrites the
	// whole FAT on every Write, so io.Copy's 32 KiB chunks (os.File's
	// WriteTo ignores a buffer) take 15 s for 100 MB. Both ends are wrapped
	// so that CopyBuffer uses buf.
	buf := make([]byte, 16<<20)
	if _, err := io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{in}, buf); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func names(files []file) []string {
	out := make([]string, len(files))
	for i, f := range files {
		out[i] = f.name
	}
	return out
}
