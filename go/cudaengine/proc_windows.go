//go:build windows

package cudaengine

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

// setProcessGroup starts the worker in a new process group
// (CREATE_NEW_PROCESS_GROUP), the Windows counterpart of setpgid.
func setProcessGroup(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.CreationFlags |= syscall.CREATE_NEW_PROCESS_GROUP
}

// killGroup kills the worker and the processes it started (taskkill /T,
// which follows parent ids: a helper whose parent already exited is not
// found), then the worker itself. With p nil (the worker was already
// reaped) it does nothing: its pid may belong to another process by now.
func killGroup(p *os.Process, pid int) {
	if p == nil {
		return
	}
	if pid > 0 {
		kill := exec.Command("taskkill", "/T", "/F", "/PID", strconv.Itoa(pid))
		kill.SysProcAttr = &syscall.SysProcAttr{HideWindow: true}
		_ = kill.Run()
	}
	_ = p.Kill()
}

// groupExists: Windows has no process-group query; the leader's own wait
// is what we rely on there.
func groupExists(int) bool { return false }

func isTextBusy(error) bool { return false }

// exitSignal is the signal that ended the process, if one did.
func exitSignal(ps *os.ProcessState) (int, bool) {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return int(ws.Signal()), true
	}
	return 0, false
}
