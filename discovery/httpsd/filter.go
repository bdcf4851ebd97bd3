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

package httpsd

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
)

// Filter selects the target groups of one http_sd response. Exporters are
// alternatives (any may match); labels must all match; Shard keeps the
// agents of one scrape shard; Tunnel, when set, keeps the agents that are
// (or are not) scraped through tunnels.
type Filter struct {
	Exporters []string
	Labels    [][2]string
	Shard     ScrapeShard
	Tunnel    *bool
}

// ParseFilter reads ?exporter=NAME and ?label=KEY=VALUE query parameters,
// both repeatable, ?shard=I&shards=N and ?tunnel=true|false. Unknown parameters are an error so
// that a typo in prometheus.yml does not silently select everything.
func ParseFilter(q url.Values) (Filter, error) {
	var f Filter
	shard, err := parseScrapeShard(q["shard"], q["shards"])
	if err != nil {
		return Filter{}, err
	}
	f.Shard = shard
	for key, vals := range q {
		switch key {
		case "shard", "shards":
		case "tunnel":
			if len(vals) != 1 || (vals[0] != "true" && vals[0] != "false") {
				return Filter{}, errors.New("tunnel filter must be given once, as true or false")
			}
			on := vals[0] == "true"
			f.Tunnel = &on
		case "exporter":
			for _, v := range vals {
				if v == "" {
					return Filter{}, errors.New("empty exporter filter")
				}
				f.Exporters = append(f.Exporters, v)
			}
		case "label":
			for _, v := range vals {
				k, val, ok := strings.Cut(v, "=")
				if !ok || k == "" {
					return Filter{}, fmt.Errorf("label filter %q is not KEY=VALUE", v)
				}
				f.Labels = append(f.Labels, [2]string{k, val})
			}
		default:
			return Filter{}, fmt.Errorf("unknown query parameter %q (use exporter, label, shard, shards and tunnel)", key)
		}
	}
	sort.Strings(f.Exporters)
	f.Exporters = slices.Compact(f.Exporters)
	sort.Slice(f.Labels, func(i, j int) bool {
		if f.Labels[i][0] != f.Labels[j][0] {
			return f.Labels[i][0] < f.Labels[j][0]
		}
		return f.Labels[i][1] < f.Labels[j][1]
	})
	return f, nil
}

// key is the canonical form of a filter, used to share cached views. The
// scrape shard's index is not part of it: one view serves all shards of a
// shard count.
func (f Filter) key() string {
	var b strings.Builder
	if f.Shard.Sharded() {
		b.WriteString("s=")
		b.WriteString(strconv.Itoa(f.Shard.Count))
	}
	if f.Tunnel != nil {
		b.WriteString("t=")
		b.WriteString(strconv.FormatBool(*f.Tunnel))
	}
	for _, e := range f.Exporters {
		b.WriteString("e=")
		b.WriteString(strconv.Quote(e))
	}
	for _, l := range f.Labels {
		b.WriteString("l=")
		b.WriteString(strconv.Quote(l[0]))
		b.WriteString(strconv.Quote(l[1]))
	}
	return b.String()
}

func (f Filter) matchAgent(a *registry.Record) bool {
	if f.Tunnel != nil && *f.Tunnel != a.Tunnel {
		return false
	}
	for _, l := range f.Labels {
		if !a.Labels.Has(l[0]) || a.Labels.Get(l[0]) != l[1] {
			return false
		}
	}
	return true
}

func (f Filter) matchExporter(name string) bool {
	if len(f.Exporters) == 0 {
		return true
	}
	_, found := slices.BinarySearch(f.Exporters, name)
	return found
}
