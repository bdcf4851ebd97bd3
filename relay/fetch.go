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
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
)

// upstream is an open upstream response.
type upstream struct {
	body   io.Reader
	closer io.Closer
	format Format
	ct     string
}

// fetchError is an upstream failure with the status we answer and the
// reason for the metrics.
type fetchError struct {
	status int
	reason string
	err    error
}

func (e *fetchError) Error() string { return e.err.Error() }

func classify(ctx context.Context, err error) *fetchError {
	var fe *fetchError
	switch {
	case errors.As(err, &fe):
		return fe
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return &fetchError{http.StatusGatewayTimeout, "timeout", errors.New("upstream timed out")}
	case errors.Is(err, errBodyTooLarge):
		return &fetchError{http.StatusBadGateway, "body_too_large", err}
	case errors.Is(err, errLineTooLong):
		return &fetchError{http.StatusBadGateway, "line_too_long", err}
	case errors.Is(err, errFrameTooLarge):
		return &fetchError{http.StatusBadGateway, "frame_too_large", err}
	case errors.Is(err, errMetricTooLarge):
		return &fetchError{http.StatusBadGateway, "metric_too_large", err}
	case errors.Is(err, errParse):
		return &fetchError{http.StatusBadGateway, "parse", err}
	case errors.Is(err, errRelabel):
		return &fetchError{http.StatusBadGateway, "relabel", err}
	case errors.Is(err, context.Canceled):
		return &fetchError{http.StatusBadGateway, "canceled", errors.New("scrape canceled")}
	}
	return &fetchError{http.StatusBadGateway, "body", fmt.Errorf("reading upstream body: %w", err)}
}

// oneLine makes an error message fit the one-line reason of a 502.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
	return truncate(s)
}

func truncate(s string) string {
	const limit = 300
	if len(s) > limit {
		return strings.ToValidUTF8(s[:limit], "") + "..."
	}
	return s
}

// fetch asks the exporter for a body with the Accept header accept.
func (e *exporter) fetch(ctx context.Context, p *pipeline, accept string, timeout time.Duration) (*upstream, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.cfg.URL, nil)
	if err != nil {
		return nil, &fetchError{http.StatusBadGateway, "request", err}
	}
	req.Header.Set("Accept", accept)
	if e.cfg.EnableCompression {
		req.Header.Set("Accept-Encoding", "gzip")
	} else {
		req.Header.Set("Accept-Encoding", "identity")
	}
	req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", strconv.FormatFloat(timeout.Seconds(), 'f', -1, 64))
	resp, err := e.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, classify(ctx, ctx.Err())
		}
		return nil, &fetchError{http.StatusBadGateway, "connect", fmt.Errorf("upstream unreachable: %w", unwrapURLError(err))}
	}
	if isRedirect(resp.StatusCode) && !e.cfg.HTTPClientConfig.FollowRedirects {
		resp.Body.Close()
		return nil, &fetchError{http.StatusBadGateway, "redirect", fmt.Errorf("upstream redirected (%s) to %q, not followed: set follow_redirects: true for this exporter to allow it", resp.Status, truncate(resp.Header.Get("Location")))}
	}
	if resp.StatusCode/100 != 2 {
		resp.Body.Close()
		return nil, &fetchError{http.StatusBadGateway, "status", fmt.Errorf("upstream answered %s", resp.Status)}
	}
	format, ct, ok := upstreamFormat(resp.Header.Get("Content-Type"), e.cfg.FallbackScrapeProtocol)
	if !ok {
		resp.Body.Close()
		return nil, &fetchError{http.StatusBadGateway, "content_type", fmt.Errorf("upstream sent unsupported Content-Type %q", truncate(resp.Header.Get("Content-Type")))}
	}
	var body io.Reader = resp.Body
	switch enc := strings.ToLower(strings.TrimSpace(resp.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		if p.gunzip == nil {
			p.gunzip, err = gzip.NewReader(resp.Body)
		} else {
			err = p.gunzip.Reset(resp.Body)
		}
		if err != nil {
			resp.Body.Close()
			if ctx.Err() != nil {
				return nil, classify(ctx, ctx.Err())
			}
			return nil, &fetchError{http.StatusBadGateway, "parse", fmt.Errorf("%w: gzip: %w", errParse, err)}
		}
		body = p.gunzip
	default:
		resp.Body.Close()
		return nil, &fetchError{http.StatusBadGateway, "content_encoding", fmt.Errorf("upstream sent unsupported Content-Encoding %q", truncate(enc))}
	}
	// The cap applies after decompression, so a gzip bomb is cut too.
	body = &capReader{r: body, max: e.relay.cfg.MaxBodyBytes}
	return &upstream{body: body, closer: resp.Body, format: format, ct: ct}, nil
}

// isRedirect reports whether a status is one that net/http's client follows
// when it may.
func isRedirect(status int) bool {
	switch status {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

func unwrapURLError(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}
