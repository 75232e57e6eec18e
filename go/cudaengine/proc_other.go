//go:build !unix && !windows

package cudaengine

import (
	"os"
	"os/exec"
)

func setProcessGroup(*exec.Cmd) {}

func killGroup(p *os.Process, _ int) {
	if p != nil {
		_ = p.Kill()
	}
}

func groupExists(int) bool { return false }

func isTextBusy(error) bool { return false }

func exitSignal(*os.ProcessState) (int, bool) { return 0, false }
