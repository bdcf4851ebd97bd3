// Copyright The baremetal_sd Authors
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

package api

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
