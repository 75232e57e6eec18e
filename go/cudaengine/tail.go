package cudaengine

import (
	"fmt"
	"strings"
	"sync"
)

// stderrTail keeps the last cap bytes a worker wrote to stderr and how much
// was dropped, for error messages.
type stderrTail struct {
	mu    sync.Mutex
	cap   int
	buf   []byte
	total int64
}

func newStderrTail(cap int) *stderrTail { return &stderrTail{cap: cap} }

func (t *stderrTail) push(chunk []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.total += int64(len(chunk))
	if t.cap <= 0 {
		return
	}
	if len(chunk) >= t.cap {
		t.buf = append(t.buf[:0], chunk[len(chunk)-t.cap:]...)
		return
	}
	t.buf = append(t.buf, chunk...)
	// Trim lazily (at 2x) so a stream of small writes costs O(1) each.
	if len(t.buf) > 2*t.cap {
		n := copy(t.buf, t.buf[len(t.buf)-t.cap:])
		t.buf = t.buf[:n]
	}
}

// text is the tail as text: "[N earlier bytes dropped] ..." when cut.
func (t *stderrTail) text() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	kept := t.buf
	if len(kept) > t.cap {
		kept = kept[len(kept)-t.cap:]
	}
	dropped := t.total - int64(len(kept))
	body := strings.TrimRight(strings.ToValidUTF8(string(kept), "\uFFFD"), " \t\r\n")
	if dropped > 0 {
		return fmt.Sprintf("[%d earlier bytes dropped] %s", dropped, body)
	}
	return body
}

// suffix is "; stderr: <tail>" or "; stderr was empty", for messages.
func (t *stderrTail) suffix() string {
	t.mu.Lock()
	empty := t.total == 0
	t.mu.Unlock()
	if empty {
		return "; stderr was empty"
	}
	return "; stderr: " + t.text()
}

// lineLogger sends whole stderr lines (cut at 4 KiB) to a Logger.
type lineLogger struct {
	log    Logger
	prefix string
	buf    []byte
}

func (l *lineLogger) write(chunk []byte) {
	if l.log == nil {
		return
	}
	for len(chunk) > 0 {
		i := strings.IndexByte(string(chunk), '\n')
		if i < 0 {
			l.buf = append(l.buf, chunk...)
			if len(l.buf) >= 4096 {
				l.flush()
			}
			return
		}
		l.buf = append(l.buf, chunk[:i]...)
		l.flush()
		chunk = chunk[i+1:]
	}
}

func (l *lineLogger) flush() {
	if l.log == nil || len(l.buf) == 0 {
		l.buf = l.buf[:0]
		return
	}
	l.log.Printf("%s%s", l.prefix, strings.TrimRight(string(l.buf), "\r"))
	l.buf = l.buf[:0]
}
