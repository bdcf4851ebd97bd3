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

package relay

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/relabel"
	"go.yaml.in/yaml/v2"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/internal/yamlerr"
)

// Defaults of the relay configuration.
const (
	DefaultExporterLabel = "exporter"
	DefaultTimeout       = 10 * time.Second
	// DefaultMaxBodyBytes bounds a body (after decompression). Relaying
	// streams, so this is not memory: it stops an upstream that never ends
	// from holding a scrape open until its timeout.
	DefaultMaxBodyBytes = 256 << 20
	// DefaultMaxLineBytes bounds one line of a text body; the longest
	// lines of real expositions are help texts of a few hundred bytes.
	DefaultMaxLineBytes = 1 << 20
	// DefaultMaxFrameBytes bounds one protobuf frame (one metric family),
	// which is held in memory in its wire encoding.
	DefaultMaxFrameBytes = 16 << 20
	// DefaultMaxMetricBytes bounds one metric that is held whole: a
	// summary or histogram with all its series, in the bytes of its text
	// lines or, from protobuf, about the memory it decodes to. 4 MiB is
	// about 80,000 classic buckets.
	DefaultMaxMetricBytes = 4 << 20
	// maxChunkBytes is the largest part of a text family parsed at once:
	// larger families (or a body without any metadata lines) are relayed
	// in parts, so memory stays bounded anyway.
	maxChunkBytes = 1 << 20
)

// Upper bounds of the size limits: each is held in memory at once.
const (
	maxLineLimit  = 64 << 20
	maxFrameLimit = 256 << 20
)

// limits returns the size limits of the configuration.
func (c *Config) limits() limits {
	return limits{maxLine: c.MaxLineBytes, maxFrame: c.MaxFrameBytes, maxMetric: c.MaxMetricBytes}
}

// Config is the relay configuration file.
type Config struct {
	// ExporterLabel is added, with the exporter's name, to every series on
	// the aggregate endpoint, where several exporters share one target.
	// Exporters' own endpoints add nothing: there the target's labels
	// (__meta_baremetal_sd_exporter) tell the exporter. Absent from the
	// file means "exporter"; empty disables the aggregate endpoint when
	// more than one exporter is configured.
	ExporterLabel *string `yaml:"exporter_label,omitempty"`
	// MaxBodyBytes bounds an upstream body, MaxLineBytes one line of a
	// text body, MaxFrameBytes one protobuf frame (one metric family),
	// MaxMetricBytes one metric held whole (DefaultMaxMetricBytes).
	MaxBodyBytes   int64 `yaml:"max_body_bytes,omitempty"`
	MaxLineBytes   int   `yaml:"max_line_bytes,omitempty"`
	MaxFrameBytes  int   `yaml:"max_frame_bytes,omitempty"`
	MaxMetricBytes int   `yaml:"max_metric_bytes,omitempty"`
	// MetricNameValidationScheme is "utf8" (the default, as in Prometheus
	// 3) or "legacy"; it decides which label names relabel rules may write.
	MetricNameValidationScheme string `yaml:"metric_name_validation_scheme,omitempty"`
	// SeriesCacheBytes bounds each exporter's series cache, which
	// remembers what relabeling made of a series across scrapes
	// (DefaultSeriesCacheBytes; only exporters with rules have one). A
	// negative value turns the cache off.
	SeriesCacheBytes int              `yaml:"series_cache_bytes,omitempty"`
	Exporters        []ExporterConfig `yaml:"exporters"`
	// Labels are the agent's labels, beside its --agent.label flags, so
	// that a reload can change them. The relay itself does not use them.
	Labels map[string]string `yaml:"labels,omitempty"`
}

// ExporterConfig is one upstream exporter.
type ExporterConfig struct {
	Name    string         `yaml:"name"`
	URL     string         `yaml:"url"`
	Timeout model.Duration `yaml:"timeout,omitempty"`
	// EnableCompression asks the exporter for gzip. Off by default: the
	// exporters are local, and compressing on loopback costs CPU on both
	// ends for nothing. A gzip answer is decoded either way.
	EnableCompression bool `yaml:"enable_compression,omitempty"`
	// FallbackScrapeProtocol is the format to read a body in when the
	// exporter's Content-Type is missing or not one the relay knows (a
	// file behind a generic web server is application/octet-stream), as
	// Prometheus 3's scrape config option of the same name: one of
	// PrometheusText0.0.4, PrometheusText1.0.0, OpenMetricsText0.0.1,
	// OpenMetricsText1.0.0, PrometheusProto. Empty refuses such a body
	// (and reads a missing Content-Type as text, as Prometheus 2 did).
	FallbackScrapeProtocol string                  `yaml:"fallback_scrape_protocol,omitempty"`
	MetricRelabelConfigs   []*relabel.Config       `yaml:"metric_relabel_configs,omitempty"`
	HTTPClientConfig       config.HTTPClientConfig `yaml:",inline"`
}

// UnmarshalYAML starts from prometheus/common's HTTP client defaults
// (enable_http2 on), which the inlined HTTPClientConfig would otherwise not
// get: yaml.v2 does not call the UnmarshalYAML of an inlined struct. Unknown
// keys are still refused, since the strict decoder is the one passed in.
//
// follow_redirects is the exception: off unless an exporter sets it. The
// relay serves what it fetches to every client that may scrape the agent,
// so an upstream must not be able to point it at a URL outside its
// configuration (another local port, a cloud metadata address).
func (e *ExporterConfig) UnmarshalYAML(unmarshal func(any) error) error {
	*e = ExporterConfig{HTTPClientConfig: config.DefaultHTTPClientConfig}
	e.HTTPClientConfig.FollowRedirects = false
	type plain ExporterConfig
	err := unmarshal((*plain)(e))
	// Say which exporter a problem is in. A *yaml.TypeError must be
	// returned as such for the decoder to go on and report the rest.
	var te *yaml.TypeError
	switch {
	case err == nil || e.Name == "":
	case errors.As(err, &te):
		for i, p := range te.Errors {
			te.Errors[i] = fmt.Sprintf("%s in exporter %q", yamlerr.Problem(p), e.Name)
		}
	default:
		err = fmt.Errorf("exporter %q: %w", e.Name, err)
	}
	return err
}

// Label returns the exporter label name, "" when disabled.
func (c *Config) Label() string {
	if c.ExporterLabel == nil {
		return DefaultExporterLabel
	}
	return *c.ExporterLabel
}

// LoadConfig reads and validates a relay configuration file.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read relay config: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("relay config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig parses and validates a relay configuration. Every mistake is
// reported here, at start, never as a panic at scrape time.
func ParseConfig(data []byte) (*Config, error) {
	cfg := &Config{}
	if err := yamlerr.UnmarshalStrict(data, cfg); err != nil {
		return nil, err
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.MaxLineBytes == 0 {
		cfg.MaxLineBytes = DefaultMaxLineBytes
	}
	if cfg.MaxFrameBytes == 0 {
		cfg.MaxFrameBytes = DefaultMaxFrameBytes
	}
	if cfg.MaxMetricBytes == 0 {
		cfg.MaxMetricBytes = DefaultMaxMetricBytes
	}
	if cfg.SeriesCacheBytes == 0 {
		cfg.SeriesCacheBytes = DefaultSeriesCacheBytes
	}
	if cfg.MaxBodyBytes < 0 || cfg.MaxLineBytes < 0 || cfg.MaxFrameBytes < 0 || cfg.MaxMetricBytes < 0 {
		return nil, errors.New("max_body_bytes, max_line_bytes, max_frame_bytes and max_metric_bytes must be positive")
	}
	if cfg.MaxLineBytes > maxLineLimit || cfg.MaxFrameBytes > maxFrameLimit || cfg.MaxMetricBytes > maxFrameLimit {
		return nil, fmt.Errorf("max_line_bytes may be at most %d, max_frame_bytes and max_metric_bytes at most %d: they are held in memory", maxLineLimit, maxFrameLimit)
	}
	scheme := model.UTF8Validation
	switch cfg.MetricNameValidationScheme {
	case "", "utf8":
		cfg.MetricNameValidationScheme = "utf8"
	case "legacy":
		scheme = model.LegacyValidation
	default:
		return nil, fmt.Errorf("metric_name_validation_scheme %q must be utf8 or legacy", cfg.MetricNameValidationScheme)
	}
	// The label is spliced into every series as it is written, bare, and
	// must parse for scrapers that only know classic names; a name that
	// needs quoting would also need escaping per scraper.
	if l := cfg.Label(); l != "" && (!model.LegacyValidation.IsValidLabelName(l) || strings.HasPrefix(l, model.ReservedLabelPrefix)) {
		return nil, fmt.Errorf("exporter_label %q must be a classic label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)", l)
	}
	seen := make(map[string]bool, len(cfg.Exporters))
	for i := range cfg.Exporters {
		e := &cfg.Exporters[i]
		// The server applies the same rule to a registration, so a config
		// that loads here is one the server accepts.
		if err := protocol.ValidateExporterName(e.Name); err != nil {
			return nil, fmt.Errorf("exporter %d: %w", i+1, err)
		}
		if seen[e.Name] {
			return nil, fmt.Errorf("exporter %q is configured twice", e.Name)
		}
		seen[e.Name] = true
		u, err := url.Parse(e.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("exporter %q: url %q must be an absolute http or https URL", e.Name, e.URL)
		}
		if e.Timeout == 0 {
			e.Timeout = model.Duration(DefaultTimeout)
		}
		if e.Timeout < 0 {
			return nil, fmt.Errorf("exporter %q: timeout must be positive", e.Name)
		}
		for j, rc := range e.MetricRelabelConfigs {
			if rc == nil {
				return nil, fmt.Errorf("exporter %q: metric_relabel_configs[%d] is empty", e.Name, j)
			}
			if err := rc.Validate(scheme); err != nil {
				return nil, fmt.Errorf("exporter %q: metric_relabel_configs[%d]: %w", e.Name, j, err)
			}
		}
		if _, ok := fallbackContentType(e.FallbackScrapeProtocol); e.FallbackScrapeProtocol != "" && !ok {
			return nil, fmt.Errorf("exporter %q: fallback_scrape_protocol %q must be one of PrometheusText0.0.4, PrometheusText1.0.0, OpenMetricsText0.0.1, OpenMetricsText1.0.0, PrometheusProto", e.Name, e.FallbackScrapeProtocol)
		}
		if err := e.HTTPClientConfig.Validate(); err != nil {
			return nil, fmt.Errorf("exporter %q: %w", e.Name, err)
		}
	}
	return cfg, nil
}

// ExporterPath is the relay path of an exporter.
func ExporterPath(name string) string { return "/exporters/" + name + "/metrics" }
