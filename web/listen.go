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

package web

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"

	toolkitweb "github.com/prometheus/exporter-toolkit/web"
)

// Listen binds every --web.listen-address of flags, or nothing with systemd
// socket activation (systemd holds those sockets already), so that a role
// can fail fast, as node_exporter does, before it creates or announces
// anything. ServeListeners serves them.
func Listen(flags *toolkitweb.FlagConfig) ([]net.Listener, error) {
	if flags.WebSystemdSocket != nil && *flags.WebSystemdSocket {
		return nil, nil
	}
	if flags.WebListenAddresses == nil || len(*flags.WebListenAddresses) == 0 {
		return nil, toolkitweb.ErrNoListeners
	}
	var listeners []net.Listener
	for _, addr := range *flags.WebListenAddresses {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			CloseAll(listeners)
			return nil, fmt.Errorf("--web.listen-address %s: %w", addr, err)
		}
		listeners = append(listeners, l)
	}
	return listeners, nil
}

// ServeListeners serves server on listeners from Listen with the web config
// of flags, or on the systemd sockets when listeners is empty.
func ServeListeners(listeners []net.Listener, server *http.Server, flags *toolkitweb.FlagConfig, logger *slog.Logger, opts ...ServeOption) error {
	if len(listeners) == 0 {
		return ListenAndServe(server, flags, logger, opts...)
	}
	return serveAll(listeners, server, flags, logger, opts...)
}

// CloseAll closes listeners; closing one that is served is harmless.
func CloseAll(listeners []net.Listener) {
	for _, l := range listeners {
		_ = l.Close()
	}
}
