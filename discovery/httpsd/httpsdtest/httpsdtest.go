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

// Package httpsdtest reads http_sd response bodies in tests the way
// Prometheus reads them: strict JSON target groups, gzip decompressed. The
// tests of httpsd, of the API that serves it and the end-to-end tests share
// it; production code does not import it.
package httpsdtest

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"testing"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// TargetGroup is Prometheus' http_sd group, decoded strictly: any key other
// than targets and labels fails, as it fails Prometheus' refresh.
type TargetGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// DecodeGroups decodes an http_sd body and fails the test unless it is a
// JSON list (never null) of strict target groups.
func DecodeGroups(t *testing.T, data []byte) []TargetGroup {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var groups []TargetGroup
	if err := dec.Decode(&groups); err != nil {
		t.Fatalf("invalid http_sd body %q: %v", protocol.Truncate(string(data)), err)
	}
	if groups == nil {
		t.Fatalf("body %q decodes to null, want []", data)
	}
	return groups
}

// Gunzip decompresses a gzip body and fails the test if it is not one.
func Gunzip(t *testing.T, data []byte) []byte {
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
