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

package yamlerr

import (
	"errors"
	"strings"
	"testing"

	"go.yaml.in/yaml/v2"
)

type inner struct {
	User string `yaml:"user"`
}

type file struct {
	Name    string            `yaml:"name"`
	Port    int               `yaml:"port"`
	On      bool              `yaml:"on"`
	Hosts   []string          `yaml:"hosts"`
	Labels  map[string]string `yaml:"labels"`
	Auth    inner             `yaml:"auth"`
	AuthPtr *inner            `yaml:"auth_ptr"`
}

func TestUnmarshalStrict_SaysWhatIsWrongWithoutGoTypes(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"unknown field", "flavor: x\n", `line 1: unknown field "flavor"`},
		{"unknown nested field", "auth:\n  usr: x\n", `line 2: unknown field "usr"`},
		{"field set twice", "name: a\nname: b\n", `line 2: field "name" is set twice`},
		{"map key set twice", "labels:\n  a: x\n  a: y\n", `line 3: key "a" is set twice`},
		{"list for a string", "name: [a]\n", "line 1: expected a string, got a list"},
		{"string for a number", "port: http\n", `line 1: expected a number, got the string "http"`},
		{"long string is cut", "port: abcdefghijklmnop\n", `line 1: expected a number, got the string "abcdefg..."`},
		{"string for a bool", "on: maybe\n", `line 1: expected true or false, got the string "maybe"`},
		{"mapping for a list", "hosts: {a: b}\n", "line 1: expected a list, got a mapping"},
		{"list for a mapping", "labels: [a]\n", "line 1: expected a mapping, got a list"},
		{"list for a struct", "auth: [a]\n", "line 1: a list is not valid here"},
		{"list for a struct pointer", "auth_ptr: [a]\n", "line 1: a list is not valid here"},
		{"several problems", "flavor: x\nport: [1]\n", `line 1: unknown field "flavor"; line 2: expected a number, got a list`},
		{"syntax error", "name: a\n  b: c\n", "line 2: mapping values are not allowed in this context"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := UnmarshalStrict([]byte(tc.in), &file{})
			if err == nil {
				t.Fatal("no error")
			}
			if err.Error() != tc.want {
				t.Errorf("error %q, want %q", err, tc.want)
			}
			for _, leak := range []string{"yamlerr.", "file", "inner", "*", "!!", "yaml:", "unmarshal"} {
				if strings.Contains(err.Error(), leak) {
					t.Errorf("error %q contains %q", err, leak)
				}
			}
			var te *yaml.TypeError
			var ye *Error
			if !errors.As(err, &ye) && !errors.As(err, &te) {
				t.Errorf("error %T does not wrap the decoder's error", err)
			}
		})
	}
}

func TestDescribe_KeepsOtherErrors(t *testing.T) {
	err := errors.New(`not a valid duration string: "abc"`)
	if got := Describe(err); !errors.Is(got, err) || got.Error() != err.Error() {
		t.Errorf("Describe(%v) = %v, want it unchanged", err, got)
	}
}
