//go:build unix

package cudaengine

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
)

// setProcessGroup starts the worker in a new process group (setpgid(0,0)),
// so that killing the group reaches every helper it forked.
func setProcessGroup(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
}

// killGroup sends SIGKILL to the whole group. Harmless if it is gone.
func killGroup(_ *os.Process, pgid int) {
	if pgid > 0 { // never kill(0) or kill(-1)
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
}

// groupExists reports whether any process (zombies included) is in the group.
func groupExists(pgid int) bool {
	if pgid <= 0 {
		return false
	}
	err := syscall.Kill(-pgid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// isTextBusy: ETXTBSY, the binary is still open for writing somewhere
// (typically just written while another goroutine forked); it clears
// within milliseconds.
func isTextBusy(err error) bool {
	return errors.Is(err, syscall.ETXTBSY)
}

// exitSignal is the signal that ended the process, if one did.
func exitSignal(ps *os.ProcessState) (int, bool) {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return int(ws.Signal()), true
	}
	return 0, false
}
