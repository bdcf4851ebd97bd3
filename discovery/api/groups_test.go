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
	"compress/gzip"
	"encoding/json"
	"io"
	"testing"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// targetGroup is Prometheus' http_sd group, decoded strictly: any key other
// than targets and labels fails, as it fails Prometheus' refresh.
type targetGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

func decodeGroups(t *testing.T, data []byte) []targetGroup {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var groups []targetGroup
	if err := dec.Decode(&groups); err != nil {
		t.Fatalf("invalid http_sd body %q: %v", protocol.Truncate(string(data)), err)
	}
	if groups == nil {
		t.Fatalf("body %q decodes to null, want []", data)
	}
	return groups
}

func gunzip(t *testing.T, data []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("gzip body does not decompress: %v", err)
	}
	return out
}
