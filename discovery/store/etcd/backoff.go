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

package etcd

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"time"
)

// etcdBackoff is a capped exponential backoff with jitter.
type etcdBackoff struct {
	min, max, cur time.Duration
	full          bool // jitter over the whole interval
}

func newEtcdBackoff(minWait, maxWait time.Duration) *etcdBackoff {
	return &etcdBackoff{min: minWait, max: maxWait, cur: minWait}
}

func (b *etcdBackoff) reset() { b.cur = b.min }

// wait sleeps for the next interval; it returns false if ctx ended first.
func (b *etcdBackoff) wait(ctx context.Context) bool {
	var r [2]byte
	_, _ = rand.Read(r[:])
	// Up to a quarter of jitter keeps replicas from retrying in step;
	// writers that collided need to spread over the whole interval.
	spread := b.cur / 4
	if b.full {
		spread = b.cur
	}
	d := b.cur - spread + time.Duration(binary.BigEndian.Uint16(r[:]))*spread/65536
	b.cur = min(2*b.cur, b.max)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
