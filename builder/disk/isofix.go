package disk

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"
)

// go-diskfs stamps an ISO with the wall clock (volume descriptors, the boot
// catalog's entry) and Rock Ridge with each workspace file's ctime and
// owner. fixISO makes the image reproducible by walking what was written
// and setting every date to the epoch and every owner to root; it then cuts
// the file to the volume's size (Finalize leaves the rest of the sparse
// file) and writes the hybrid MBR.

const (
	vdStart   = 16 // first volume descriptor, in 2048-byte blocks
	vdBoot    = 0
	vdPrimary = 1
	vdEnd     = 255
)

type isoImage struct {
	f     *os.File
	epoch time.Time
	seen  map[uint32]bool   // directory extents walked
	sizes map[uint32]uint32 // file extent → size
}

func (im *isoImage) read(lba uint32, n int) ([]byte, error) {
	b := make([]byte, n)
	_, err := im.f.ReadAt(b, int64(lba)*isoBlock)
	return b, err
}

func (im *isoImage) write(b []byte, off int64) error {
	_, err := im.f.WriteAt(b, off)
	return err
}

func fixISO(path string, epoch time.Time, label, bootHybrid string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	im := &isoImage{f: f, epoch: epoch.UTC(), seen: map[uint32]bool{}, sizes: map[uint32]uint32{}}
	var blocks, catalog uint32
	for lba := uint32(vdStart); ; lba++ {
		vd, err := im.read(lba, isoBlock)
		if err != nil {
			return fmt.Errorf("volume descriptor at block %d: %w", lba, err)
		}
		if string(vd[1:6]) != "CD001" {
			return fmt.Errorf("block %d: no volume descriptor", lba)
		}
		switch vd[0] {
		case vdBoot:
			catalog = binary.LittleEndian.Uint32(vd[71:75])
		case vdPrimary:
			blocks = binary.LittleEndian.Uint32(vd[80:84])
			// go-diskfs pads identifiers with NULs; ECMA-119 with spaces.
			for _, id := range [][2]int{{8, 40}, {40, 72}, {190, 318}, {318, 446}, {446, 574}, {574, 702}, {702, 739}, {739, 776}, {776, 813}} {
				for i := id[0]; i < id[1]; i++ {
					if vd[i] == 0 {
						vd[i] = ' '
					}
				}
			}
			for _, off := range []int{813, 830, 864} { // creation, modification, effective
				copy(vd[off:off+17], im.decDate())
			}
			copy(vd[847:864], "0000000000000000\x00") // expiration: never
			copy(vd[156+18:156+25], im.recDate())
			if err := im.write(vd, int64(lba)*isoBlock); err != nil {
				return err
			}
			root := vd[156 : 156+34]
			if err := im.walk(binary.LittleEndian.Uint32(root[2:6]), binary.LittleEndian.Uint32(root[10:14])); err != nil {
				return err
			}
		}
		if vd[0] == vdEnd {
			break
		}
		if lba > vdStart+32 {
			return errors.New("no volume descriptor set terminator")
		}
	}
	if blocks == 0 || catalog == 0 {
		return errors.New("no primary volume descriptor or no El Torito boot record")
	}
	if err := im.hybridMBR(catalog, label, bootHybrid); err != nil {
		return err
	}
	if err := f.Truncate(int64(blocks) * isoBlock); err != nil {
		return err
	}
	return f.Close()
}

// decDate is the epoch as a volume descriptor date: "YYYYMMDDHHMMSScc", GMT.
func (im *isoImage) decDate() []byte {
	return append([]byte(im.epoch.Format("20060102150405")+"00"), 0)
}

// recDate is the epoch as a directory record date.
func (im *isoImage) recDate() []byte {
	t := im.epoch
	return []byte{byte(t.Year() - 1900), byte(t.Month()), byte(t.Day()), byte(t.Hour()), byte(t.Minute()), byte(t.Second()), 0}
}

// walk fixes every record of the directory at extent (size bytes) and
// recurses into subdirectories.
func (im *isoImage) walk(extent, size uint32) error {
	if im.seen[extent] {
		return nil
	}
	im.seen[extent] = true
	b, err := im.read(extent, int(size))
	if err != nil {
		return fmt.Errorf("directory at block %d: %w", extent, err)
	}
	type sub struct{ extent, size uint32 }
	var subs []sub
	for off := 0; off < len(b); {
		n := int(b[off])
		if n == 0 { // records do not cross blocks: skip to the next
			off = (off/isoBlock + 1) * isoBlock
			continue
		}
		if n < 34 || off+n > len(b) {
			return fmt.Errorf("directory at block %d: bad record at offset %d", extent, off)
		}
		r := b[off : off+n]
		copy(r[18:25], im.recDate())
		ext, sz := binary.LittleEndian.Uint32(r[2:6]), binary.LittleEndian.Uint32(r[10:14])
		nameLen := int(r[32])
		if r[25]&2 != 0 {
			if !(nameLen == 1 && r[33] <= 1) { // not "." or ".."
				subs = append(subs, sub{ext, sz})
			}
		} else {
			im.sizes[ext] = sz
		}
		su := 33 + nameLen
		if nameLen%2 == 0 {
			su++ // padding byte
		}
		if su < n {
			if err := im.fixSUSP(r[su:]); err != nil {
				return fmt.Errorf("directory at block %d: %w", extent, err)
			}
		}
		off += n
	}
	if err := im.write(b, int64(extent)*isoBlock); err != nil {
		return err
	}
	for _, s := range subs {
		if err := im.walk(s.extent, s.size); err != nil {
			return err
		}
	}
	return nil
}

// fixSUSP rewrites Rock Ridge's TF (timestamps) and PX (owner) entries in a
// system use area, following CE continuations.
func (im *isoImage) fixSUSP(b []byte) error {
	for off := 0; off+4 <= len(b); {
		sig, n := string(b[off:off+2]), int(b[off+2])
		if n < 4 || off+n > len(b) {
			return nil // padding or the end of the area
		}
		e := b[off : off+n]
		switch sig {
		case "TF":
			flags := e[4]
			w := 7
			if flags&0x80 != 0 {
				w = 17
			}
			for p := 5; p+w <= n; p += w {
				if w == 7 {
					copy(e[p:p+7], im.recDate())
				} else {
					copy(e[p:p+17], im.decDate())
				}
			}
		case "PX":
			if n >= 36 {
				clear(e[20:36]) // uid and gid, both byte orders
			}
		case "CE":
			lba, at, ln := binary.LittleEndian.Uint32(e[4:8]), binary.LittleEndian.Uint32(e[12:16]), binary.LittleEndian.Uint32(e[20:24])
			blk, err := im.read(lba, isoBlock)
			if err != nil {
				return err
			}
			if int(at+ln) > len(blk) {
				return fmt.Errorf("CE entry past its block")
			}
			if err := im.fixSUSP(blk[at : at+ln]); err != nil {
				return err
			}
			if err := im.write(blk, int64(lba)*isoBlock); err != nil {
				return err
			}
		case "ST":
			return nil
		}
		off += n
	}
	return nil
}

// hybridMBR writes an MBR into the ISO's (empty) system area so that the
// ISO also boots as a disk (a USB stick):
//   - for UEFI, one partition, type EF, over the El Torito EFI image: the
//     firmware finds its EFI system partition there;
//   - for BIOS, GRUB's boot_hybrid.img as boot code, pointed at the El
//     Torito BIOS image past its 2048-byte cdboot.img (the diskboot.img
//     sector), whose block list is pointed at the core image after it; the
//     image's boot info table checksum is recomputed. These are the patches
//     xorriso makes for grub-mkrescue (--grub2-mbr, --grub2-boot-info).
func (im *isoImage) hybridMBR(catalog uint32, label, bootHybrid string) error {
	cat, err := im.read(catalog, isoBlock)
	if err != nil {
		return fmt.Errorf("boot catalog: %w", err)
	}
	var efi, bios uint32
	if cat[32] == 0x88 { // the default entry: BIOS
		bios = binary.LittleEndian.Uint32(cat[40:44])
	}
	for off := 64; off+32 <= len(cat); off += 32 {
		h := cat[off]
		if h != 0x90 && h != 0x91 {
			break
		}
		platform, count := cat[off+1], int(binary.LittleEndian.Uint16(cat[off+2:off+4]))
		for i := 1; i <= count && off+32*i+32 <= len(cat); i++ {
			if e := cat[off+32*i:]; platform == 0xef && e[0] == 0x88 {
				efi = binary.LittleEndian.Uint32(e[8:12])
			}
		}
		off += 32 * count
	}
	efiSize, ok := im.sizes[efi]
	if efi == 0 || !ok {
		return errors.New("boot catalog: no EFI entry pointing at a file")
	}
	biosSize, ok := im.sizes[bios]
	if bios == 0 || !ok || biosSize < 2048+512 {
		return errors.New("boot catalog: no BIOS entry pointing at a GRUB El Torito image")
	}
	sys, err := im.read(0, 512)
	if err != nil {
		return err
	}
	for _, x := range sys {
		if x != 0 {
			return errors.New("the ISO's system area is not empty: not writing an MBR over it")
		}
	}
	code, err := os.ReadFile(bootHybrid)
	if err != nil {
		return fmt.Errorf("BIOS boot code: %w (apt-get install grub-pc-bin)", err)
	}
	if len(code) != 512 {
		return fmt.Errorf("BIOS boot code %s: %d bytes, want 512", bootHybrid, len(code))
	}
	const sectors = isoBlock / 512
	mbr := make([]byte, 512)
	copy(mbr[:432], code[:432])
	binary.LittleEndian.PutUint64(mbr[432:440], uint64(bios)*sectors+4) // diskboot.img
	sig := sha256.Sum256([]byte("mbr " + label))
	copy(mbr[440:444], sig[:4]) // disk signature
	p := mbr[446:462]
	p[0] = 0x00
	copy(p[1:4], []byte{0xfe, 0xff, 0xff}) // CHS unused: LBA only
	p[4] = 0xef
	copy(p[5:8], []byte{0xfe, 0xff, 0xff})
	binary.LittleEndian.PutUint32(p[8:12], efi*sectors)
	binary.LittleEndian.PutUint32(p[12:16], (efiSize+511)/512)
	mbr[510], mbr[511] = 0x55, 0xaa
	if err := im.write(mbr, 0); err != nil {
		return err
	}

	img := make([]byte, biosSize)
	if _, err := im.f.ReadAt(img, int64(bios)*isoBlock); err != nil {
		return fmt.Errorf("BIOS image: %w", err)
	}
	// diskboot.img's block list: the core image starts in the next sector.
	binary.LittleEndian.PutUint64(img[2048+500:], uint64(bios)*sectors+5)
	var sum uint32
	for i := 64; i+4 <= len(img); i += 4 {
		sum += binary.LittleEndian.Uint32(img[i:])
	}
	binary.LittleEndian.PutUint32(img[20:24], sum) // boot info table checksum
	return im.write(img, int64(bios)*isoBlock)
}
