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

// Package yamlerr words the errors of go.yaml.in/yaml/v2 for operators.
// The decoder names the Go types a file is decoded into ("field timout not
// found in type relay.plain"), which mean nothing to whoever edits the
// file; these errors name the line, the key and the kind of value instead.
package yamlerr

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v2"
)

// Error is a decoding error in operator language. It wraps the decoder's
// error.
type Error struct {
	// Problems are the reworded problems, one per line of the file.
	Problems []string
	err      error
}

func (e *Error) Error() string { return strings.Join(e.Problems, "; ") }

// Unwrap returns the decoder's error.
func (e *Error) Unwrap() error { return e.err }

// UnmarshalStrict is yaml.UnmarshalStrict (unknown and repeated keys are
// errors) with its errors reworded by Describe.
func UnmarshalStrict(data []byte, v any) error {
	if err := yaml.UnmarshalStrict(data, v); err != nil {
		return Describe(err)
	}
	return nil
}

// Describe rewords an error of the yaml decoder. The type errors it
// collects become one problem each; a syntax error loses its "yaml: "
// prefix; any other error (one a type's own UnmarshalYAML returned, such as
// a bad duration) is kept as it is.
func Describe(err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		problems := make([]string, len(te.Errors))
		for i, p := range te.Errors {
			problems[i] = Problem(p)
		}
		return &Error{Problems: problems, err: err}
	}
	if msg, ok := strings.CutPrefix(err.Error(), "yaml: "); ok {
		return &Error{Problems: []string{msg}, err: err}
	}
	return err
}

var (
	notFound   = regexp.MustCompile(`^line (\d+): field (.+) not found in type \S+$`)
	setTwice   = regexp.MustCompile(`^line (\d+): field (.+) already set in type \S+$`)
	keyTwice   = regexp.MustCompile(`^line (\d+): key (.+) already set in map$`)
	wrongKind  = regexp.MustCompile("^line (\\d+): cannot unmarshal !!(\\w+)(?: `(.*)`)? into (\\S+)$")
	numberType = regexp.MustCompile(`^u?int(8|16|32|64)?$|^float(32|64)$`)
)

// Problem rewords one problem of a yaml.TypeError ("line 4: field timout
// not found in type relay.plain" becomes `line 4: unknown field "timout"`).
// A problem it does not recognize is returned unchanged.
func Problem(p string) string {
	if m := notFound.FindStringSubmatch(p); m != nil {
		return fmt.Sprintf("line %s: unknown field %q", m[1], m[2])
	}
	if m := setTwice.FindStringSubmatch(p); m != nil {
		return fmt.Sprintf("line %s: field %q is set twice", m[1], m[2])
	}
	if m := keyTwice.FindStringSubmatch(p); m != nil {
		return fmt.Sprintf("line %s: key %s is set twice", m[1], m[2])
	}
	if m := wrongKind.FindStringSubmatch(p); m != nil {
		got := yamlKind(m[2], m[3])
		if want := goKind(m[4]); want != "" {
			return fmt.Sprintf("line %s: expected %s, got %s", m[1], want, got)
		}
		return fmt.Sprintf("line %s: %s is not valid here", m[1], got)
	}
	return p
}

// yamlKind names what the file holds: a YAML tag and, for scalars, the
// start of the value as the decoder quotes it.
func yamlKind(tag, value string) string {
	switch tag {
	case "seq":
		return "a list"
	case "map":
		return "a mapping"
	case "null":
		return "an empty value"
	case "str":
		return fmt.Sprintf("the string %q", value)
	case "bool":
		return "the boolean " + value
	case "int", "float":
		return "the number " + value
	}
	return "the value " + value
}

// goKind names the kind of value a Go type takes, "" when the type alone
// does not tell (a struct is a mapping, but a named string type is not).
func goKind(typ string) string {
	switch {
	case typ == "string":
		return "a string"
	case typ == "bool":
		return "true or false"
	case numberType.MatchString(typ):
		return "a number"
	case strings.HasPrefix(typ, "[]"):
		return "a list"
	case strings.HasPrefix(typ, "map["):
		return "a mapping"
	}
	return ""
}
