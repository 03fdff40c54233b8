package mirror

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/plinth-dev/plinth/builder"
	"github.com/plinth-dev/plinth/builder/kernel"
	"github.com/plinth-dev/plinth/builder/ocitar"
	"github.com/plinth-dev/plinth/images"
)

// kernelImage makes a one-layer image of what the builds of the given
// kernel tables take from the kernel tree at dir: boot/vmlinuz-V, the index
// files of lib/modules/V, and every module and firmware file each carries
// (builder.KernelFiles: the spec's modules and stage 1's with their
// dependencies, the drivers stage 1 loads by hardware). A Debian kernel
// tree is ~400 MB; this is a few tens.
func kernelImage(dir string, kernels []*images.Kernel, tmp string, epoch time.Time) (v1.Image, error) {
	k, err := kernel.Find(dir)
	if err != nil {
		return nil, err
	}
	var carried []string
	for _, ks := range kernels {
		fs, err := builder.KernelFiles(k, ks)
		if err != nil {
			return nil, err
		}
		for _, f := range fs {
			if !slices.Contains(carried, f) {
				carried = append(carried, f)
			}
		}
	}
	sort.Strings(carried)
	tree, err := os.MkdirTemp(tmp, "kernel-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tree)
	files := []string{filepath.Join("boot", filepath.Base(k.Image))}
	ents, err := os.ReadDir(k.ModulesDir)
	if err != nil {
		return nil, err
	}
	modRel, _ := filepath.Rel(dir, k.ModulesDir)
	for _, e := range ents {
		if e.Type().IsRegular() {
			files = append(files, filepath.Join(modRel, e.Name())) // modules.dep, modules.builtin, …
		}
	}
	for _, f := range carried {
		files = append(files, filepath.FromSlash(f))
	}
	for _, f := range files {
		if err := copyFile(filepath.Join(dir, f), filepath.Join(tree, f)); err != nil {
			return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
		}
	}
	// The layer is read again when the image is written: keep it until
	// the caller's tmp goes.
	l, err := ocitar.LayerFromDir(tree, tmp, epoch)
	if err != nil {
		return nil, err
	}
	return ocitar.ImageFromLayers(epoch, l)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, st.Mode().Perm())
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
