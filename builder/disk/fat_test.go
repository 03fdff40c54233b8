package disk

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/filesystem"
)

// TestFATTimesComeFromTheEpochNotTheEnvironment writes one FAT volume under
// different values of SOURCE_DATE_EPOCH (which go-diskfs reads for the
// entries it makes) and with it unset: every entry must carry the epoch
// given, so the bytes are the same, and the variable is left as it was.
func TestFATTimesComeFromTheEpochNotTheEnvironment(t *testing.T) {
	epoch := time.Unix(1700000000, 0)
	files := []file{
		{name: "EFI/BOOT/BOOTX64.EFI", data: []byte("MZ stand-in")},
		{name: "plinth/a/b/config.json", data: []byte(`{}`)},
		{name: "top.txt", data: []byte("top")},
	}
	for _, tc := range []struct {
		name   string
		fstype filesystem.Type
		size   int64
	}{
		{"fat16", filesystem.TypeFat16, 8 * mib},
		{"fat32", filesystem.TypeFat32, 40 * mib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			write := func(epoch time.Time) []byte {
				t.Helper()
				p := filepath.Join(t.TempDir(), "fat.img")
				d, err := diskfs.Create(p, tc.size, diskfs.SectorSize512)
				if err != nil {
					t.Fatal(err)
				}
				err = writeFAT(context.Background(), d, 0, tc.fstype, "PLINTHTEST1", files, epoch)
				d.Close()
				if err != nil {
					t.Fatal(err)
				}
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			var imgs [][]byte
			for _, env := range []string{"1000000000", "1300000000"} {
				t.Setenv("SOURCE_DATE_EPOCH", env)
				imgs = append(imgs, write(epoch))
				if got := os.Getenv("SOURCE_DATE_EPOCH"); got != env {
					t.Fatalf("SOURCE_DATE_EPOCH is %q after writeFAT, want %q as the test set it", got, env)
				}
			}
			os.Unsetenv("SOURCE_DATE_EPOCH") // t.Setenv restores it
			imgs = append(imgs, write(epoch))
			if v, ok := os.LookupEnv("SOURCE_DATE_EPOCH"); ok {
				t.Fatalf("writeFAT set SOURCE_DATE_EPOCH=%q", v)
			}
			for i, b := range imgs[1:] {
				if !bytes.Equal(b, imgs[0]) {
					t.Errorf("volume %d differs from volume 0: an entry took its time from the environment or the clock", i+1)
				}
			}
			if bytes.Equal(write(epoch.Add(24*time.Hour)), imgs[0]) {
				t.Error("a different epoch gave the same volume: the epoch is not in it")
			}
		})
	}
}
