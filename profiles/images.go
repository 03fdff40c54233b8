package profiles

import (
	"fmt"

	"github.com/plinth-dev/plinth/internal/tomlx"
	"github.com/plinth-dev/plinth/roles"
)

// ImageRole says which role an image was built for ("" for none) and
// whether it is built at all; the manifests of an artifacts directory
// answer it.
type ImageRole func(image string) (role string, built bool)

// CheckImages reports, at the field that chose them, every machine (and the
// default for unknown machines, when it boots them) whose image is not
// built or was built for another role than the machine has: such a machine
// would boot services its profile does not configure, or configure
// services its image does not have.
func (s *Site) CheckImages(imageRole ImageRole) error {
	rep := &tomlx.Report{}
	rep.Merge(s.pos)
	check := func(file, at, image, role string) {
		built, ok := imageRole(image)
		switch {
		case image == "":
			// A machine without an image: LoadSite reported it.
		case !ok:
			rep.Addf(file, at+".image", "image %q is not built", image)
		default:
			if err := CheckImageRole(role, image, built); err != nil {
				rep.Addf(file, at+".role", "%v", err)
			}
		}
	}
	for _, m := range s.Machines {
		check(m.File, m.at, m.Image, m.Role)
	}
	if s.Default.Action == "boot" {
		check(s.defaults, "default", s.Default.Image, s.Default.Role)
	}
	return rep.Err()
}

// CheckImageRole is the error for a machine of role booting an image
// built for imageRole; nil when the two are the same.
func CheckImageRole(role, image, imageRole string) error {
	if role == imageRole {
		return nil
	}
	return fmt.Errorf("role %s, but image %q was built for role %s", orNone(role), image, orNone(imageRole))
}

func orNone(role string) string {
	if role == "" {
		return "none"
	}
	if _, err := roles.Lookup(role); err != nil {
		return fmt.Sprintf("%q (unknown)", role)
	}
	return fmt.Sprintf("%q", role)
}
