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
	"context"
	"log/slog"
	"sync"
	"time"
)

// Bounds of the registration log: a flood of bad tokens must not flood the
// log with it.
const (
	regLogWindow   = time.Minute
	regLogMaxLines = 60
)

// registrationLog logs enrollments and refused registrations, which an
// operator needs to see (who joined, whose token failed and why), at most
// regLogMaxLines per regLogWindow; what it drops it counts and reports in
// one line when the next window opens.
type registrationLog struct {
	logger *slog.Logger
	now    func() time.Time

	mu         sync.Mutex
	start      time.Time
	lines      int
	suppressed int
}

func (l *registrationLog) log(level slog.Level, msg string, args ...any) {
	now := l.now()
	l.mu.Lock()
	if now.Sub(l.start) >= regLogWindow {
		if l.suppressed > 0 {
			l.logger.Warn("Registration log lines were suppressed", "count", l.suppressed, "window", regLogWindow)
		}
		l.start, l.lines, l.suppressed = now, 0, 0
	}
	ok := l.lines < regLogMaxLines
	if ok {
		l.lines++
	} else {
		l.suppressed++
	}
	l.mu.Unlock()
	if ok {
		l.logger.Log(context.Background(), level, msg, args...)
	}
}
