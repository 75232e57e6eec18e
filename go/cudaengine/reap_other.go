//go:build !linux

package cudaengine

// Child subreapers are a Linux feature; elsewhere ReapOrphans does nothing.
func enableSubreaper(Logger) {}

func reapGroupNoHang(int) {}
