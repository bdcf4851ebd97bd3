package discovery

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestRegistrationLog_BoundsRate(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1000, 0)
	l := &registrationLog{logger: slog.New(slog.NewTextHandler(&buf, nil)), now: func() time.Time { return now }}
	for range regLogMaxLines + 25 {
		l.log(slog.LevelWarn, "Registration refused", "reason", "bad_token")
	}
	if got := strings.Count(buf.String(), "Registration refused"); got != regLogMaxLines {
		t.Errorf("%d lines in the first window, want %d", got, regLogMaxLines)
	}
	now = now.Add(regLogWindow)
	l.log(slog.LevelInfo, "Agent enrolled")
	out := buf.String()
	if !strings.Contains(out, "Registration log lines were suppressed") || !strings.Contains(out, "count=25") {
		t.Errorf("the next window does not report the 25 suppressed lines:\n%s", out[strings.LastIndex(out, "Registration refused"):])
	}
	if !strings.Contains(out, "Agent enrolled") {
		t.Error("the next window's first line was dropped")
	}
}
