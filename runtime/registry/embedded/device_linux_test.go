package embedded

import "golang.org/x/sys/unix"

// mkdevZero makes a device node at path, of the device that /dev/zero is on Linux.
func mkdevZero(path string) error {
	return unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 5)))
}
