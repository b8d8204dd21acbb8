//go:build !linux

package embedded

import "errors"

// mkdevZero makes a device node at path, of the device that /dev/zero is on Linux; device
// numbers, and the type of the argument of Mknod, vary between other systems.
func mkdevZero(string) error {
	return errors.ErrUnsupported
}
