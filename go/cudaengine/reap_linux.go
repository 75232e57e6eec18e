//go:build linux

package cudaengine

import (
	"sync"
	"syscall"
)

var subreaperOnce sync.Once

const prSetChildSubreaper = 36 // PR_SET_CHILD_SUBREAPER

// enableSubreaper makes this process a child subreaper (process-wide), so
// helpers a worker forks and abandons become our children and can be
// reaped instead of staying zombies under an init that never reaps.
func enableSubreaper(log Logger) {
	subreaperOnce.Do(func() {
		if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); e != 0 && log != nil {
			log.Printf("cuda-engine: PR_SET_CHILD_SUBREAPER failed: %v", e)
		}
	})
}

// reapGroupNoHang reaps, without blocking, every child of ours in the
// group. Call it only after the leader was reaped (it would steal its
// status otherwise).
func reapGroupNoHang(pgid int) {
	if pgid <= 0 {
		return
	}
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-pgid, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
