package main

import (
	"archive/tar"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/plinth-dev/plinth/manifest"
	"github.com/plinth-dev/plinth/profiles/node"
)

func newInspectCmd(g *globals) *cobra.Command {
	var top int
	var verify bool
	c := &cobra.Command{
		Use:   "inspect DIR/<name>",
		Short: "Show what a built image holds: sources, digests, sizes, largest files",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			m, err := manifest.Read(dir)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintf(w, "image\t%s\n", m.Name)
			if m.Description != "" {
				fmt.Fprintf(w, "description\t%s\n", m.Description)
			}
			if m.Role != "" {
				fmt.Fprintf(w, "role\t%s %v\n", m.Role, m.Services)
			}
			fmt.Fprintf(w, "spec\t%s\n", m.SpecSHA256)
			fmt.Fprintf(w, "epoch\t%d\n", m.SourceDateEpoch)
			if m.Kernel != nil {
				fmt.Fprintf(w, "kernel\t%s\n", m.Kernel.Version)
				fmt.Fprintf(w, "modules\t%v\n", m.Kernel.Modules)
			}
			if m.Cmdline != "" {
				fmt.Fprintf(w, "cmdline\t%s\n", m.Cmdline)
			}
			fmt.Fprintln(w, "\nsources")
			for _, s := range m.Sources {
				fmt.Fprintf(w, "  %s\t%s\t%s\n", s.Use, s.Ref, s.Digest)
			}
			fmt.Fprintln(w, "\nfiles")
			for _, f := range m.Files {
				fmt.Fprintf(w, "  %s\t%s\t%s\n", f.Name, node.FormatSize(f.Size), f.SHA256)
			}
			w.Flush()
			if verify {
				if err := manifest.Verify(dir, m); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), "\nall files match the manifest")
			}
			if top > 0 && m.File(manifest.Rootfs) != nil {
				ents, err := largestInSquashfs(filepath.Join(dir, manifest.Rootfs), top)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "\nlargest files in %s\n", manifest.Rootfs)
				w = tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', tabwriter.AlignRight)
				for _, e := range ents {
					fmt.Fprintf(w, "  %s\t  %s\n", node.FormatSize(e.size), e.name)
				}
				w.Flush()
			}
			return nil
		},
	}
	c.Flags().IntVar(&top, "top", 15, "how many of the largest files of the rootfs to list (0: none)")
	c.Flags().BoolVar(&verify, "verify", false, "also check every file against its digest")
	return c
}

type sizedEntry struct {
	name string
	size int64
}

// largestInSquashfs streams the image through sqfs2tar and keeps the n
// largest regular files.
func largestInSquashfs(path string, n int) ([]sizedEntry, error) {
	cmd := exec.Command("sqfs2tar", "--no-skip", path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("sqfs2tar (Debian squashfs-tools-ng): %w", err)
	}
	var ents []sizedEntry
	tr := tar.NewReader(out)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		if h.Typeflag == tar.TypeReg {
			ents = append(ents, sizedEntry{h.Name, h.Size})
		}
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("sqfs2tar %s: %w", path, err)
	}
	slices.SortFunc(ents, func(a, b sizedEntry) int {
		return cmp.Or(cmp.Compare(b.size, a.size), cmp.Compare(a.name, b.name))
	})
	if len(ents) > n {
		ents = ents[:n]
	}
	return ents, nil
}
