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

package mux

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/baremetal-sd/baremetal_sd/internal/poll"
	"github.com/baremetal-sd/baremetal_sd/internal/testca"
)

// testWindow is the receive window of the tests' sessions and agents, as
// the tunnel server and agent configure it.
const testWindow = 1 << 20

// transports the interoperability tests run over: the server's session
// on the accepted end, the agent's yamux.Server on the dialed end.
var transports = []string{"tcp", "tls"}

// dialPair returns both ends of a loopback connection; with "tls", a TLS
// connection over it, handshaken.
func dialPair(t testing.TB, transport string) (server, agent net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	agent, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	if transport == "tls" {
		cert, pool := serving(t)
		ts := tls.Server(server, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
		tc := tls.Client(agent, &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13})
		errc := make(chan error, 1)
		go func() { errc <- ts.Handshake() }()
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		server, agent = ts, tc
	}
	t.Cleanup(func() { _ = server.Close(); _ = agent.Close() })
	return server, agent
}

// serving returns a serving certificate for localhost and a pool that
// trusts its issuer.
func serving(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	ca := testca.New(t, "mux test CA")
	cert := ca.Issue(t, testca.Leaf{CommonName: "localhost", DNSNames: []string{"localhost"}, Usage: testca.ServerAuth})
	return cert.TLS(), ca.Pool()
}

// requireResetAlone checks that st, which what describes, was reset and
// that the session it belonged to still answers the agent.
func requireResetAlone(t *testing.T, st *Stream, agent *yamux.Session, what string) {
	t.Helper()
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := st.Read(make([]byte, 1)); !errors.Is(err, ErrReset) {
		t.Fatalf("read on %s: %v, want ErrReset", what, err)
	}
	if _, err := agent.Ping(); err != nil {
		t.Fatalf("the session ended with %s: %v", what, err)
	}
}

// violations counts Config.Violation calls by reason.
type violations struct {
	mu sync.Mutex
	n  map[string]int
}

func (v *violations) add(reason string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.n == nil {
		v.n = map[string]int{}
	}
	v.n[reason]++
}

func (v *violations) get(reason string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.n[reason]
}

// testConfig is the session configuration of the tests, as the tunnel
// server sets it up. Its timeouts are long: under the race detector on a loaded machine the
// agent's acknowledgement of a new stream can wait seconds behind other
// streams' data in yamux' send queue, and the tests that are not about
// timeouts must not fail on them.
func testConfig(v *violations) *Config {
	c := &Config{Window: testWindow, OpenTimeout: time.Minute, CloseTimeout: time.Minute, WriteTimeout: time.Minute}
	if v != nil {
		c.Violation = v.add
	}
	return c
}

// agentConfig is the agent's yamux configuration, as tunnel.Client sets it.
func agentConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.AcceptBacklog = 16
	c.MaxStreamWindowSize = testWindow
	c.LogOutput = io.Discard
	return c
}

// pair starts the server's session and the agent's yamux.Server on the
// two ends of a connection.
func pair(t testing.TB, transport string, cfg *Config, acfg *yamux.Config) (*Session, *yamux.Session) {
	t.Helper()
	sc, ac := dialPair(t, transport)
	agent, err := yamux.Server(ac, acfg)
	if err != nil {
		t.Fatal(err)
	}
	s := NewSession(sc, cfg)
	t.Cleanup(func() { _ = s.Close(); _ = agent.Close() })
	return s, agent
}

func payload(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := mrand.New(mrand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// streamCount is how many streams the session keeps.
func (s *Session) streamCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// openAccepted opens a stream of s and returns it with the agent's end,
// once the agent accepted it.
func openAccepted(t *testing.T, s *Session, agent *yamux.Session) (*Stream, *yamux.Stream) {
	t.Helper()
	st, err := s.Open()
	if err != nil {
		t.Fatal(err)
	}
	ast, err := agent.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	return st, ast
}

// TestSession_InteropTransfers: many streams at once, each carrying
// several MiB each way between the session and yamux, byte for byte, with
// half-closes ending each direction.
func TestSession_InteropTransfers(t *testing.T) {
	for _, transport := range transports {
		for _, tc := range []struct {
			name     string
			streams  int
			up, down int // bytes server to agent, agent to server
		}{
			{"one stream, large both ways", 1, 6 << 20, 6 << 20},
			{"many streams", 16, 512 << 10, 3 << 20},
			{"small and empty", 8, 1, 0},
		} {
			t.Run(transport+"/"+tc.name, func(t *testing.T) {
				s, agent := pair(t, transport, testConfig(nil), agentConfig())
				// The agent echoes nothing: it checks what it got and
				// sends its own payload, then half-closes.
				agentErr := make(chan error, tc.streams)
				go func() {
					for range tc.streams {
						st, err := agent.AcceptStream()
						if err != nil {
							agentErr <- err
							return
						}
						go func() {
							defer st.Close()
							var idx [4]byte
							if _, err := io.ReadFull(st, idx[:]); err != nil {
								agentErr <- fmt.Errorf("agent reads the index: %w", err)
								return
							}
							seed := uint64(idx[0]) | uint64(idx[1])<<8
							errc := make(chan error, 1)
							go func() {
								_, err := st.Write(payload(tc.down, seed+1000))
								errc <- err
							}()
							got, err := io.ReadAll(st)
							if err != nil {
								agentErr <- fmt.Errorf("agent reads: %w", err)
								return
							}
							if !bytes.Equal(got, payload(tc.up, seed)) {
								agentErr <- fmt.Errorf("stream %d: the agent got %d bytes, not the %d sent", seed, len(got), tc.up)
								return
							}
							agentErr <- <-errc
						}()
					}
				}()
				var wg sync.WaitGroup
				errs := make(chan error, tc.streams)
				for i := range tc.streams {
					wg.Go(func() {
						st, err := s.Open()
						if err != nil {
							errs <- err
							return
						}
						defer st.Close()
						if _, err := st.Write([]byte{byte(i), byte(i >> 8), 0, 0}); err != nil {
							errs <- err
							return
						}
						werr := make(chan error, 1)
						go func() {
							_, err := st.Write(payload(tc.up, uint64(i)))
							if err == nil {
								err = st.CloseWrite()
							}
							werr <- err
						}()
						got, err := io.ReadAll(st)
						if err != nil {
							errs <- fmt.Errorf("server reads stream %d: %w", i, err)
							return
						}
						if !bytes.Equal(got, payload(tc.down, uint64(i)+1000)) {
							errs <- fmt.Errorf("stream %d: the server got %d bytes, not the %d sent", i, len(got), tc.down)
							return
						}
						errs <- <-werr
					})
				}
				wg.Wait()
				for range tc.streams {
					if err := <-errs; err != nil {
						t.Error(err)
					}
					if err := <-agentErr; err != nil {
						t.Error(err)
					}
				}
				// Done streams are forgotten: an idle session keeps no map.
				poll.Until(t, 10*time.Second, func() error {
					if n := s.streamCount(); n != 0 || s.streams != nil {
						return fmt.Errorf("%d streams kept", n)
					}
					return nil
				})
			})
		}
	}
}

// TestSession_SlowReaderDoesNotStallOthers: a stream whose reader takes
// nothing fills its window, and another stream of the same session still
// carries data both ways.
func TestSession_SlowReaderDoesNotStallOthers(t *testing.T) {
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) {
			s, agent := pair(t, transport, testConfig(nil), agentConfig())
			slow, err := s.Open()
			if err != nil {
				t.Fatal(err)
			}
			defer slow.Close()
			big := payload(4<<20, 1)
			agentDone := make(chan error, 1)
			go func() {
				st, err := agent.AcceptStream()
				if err != nil {
					agentDone <- err
					return
				}
				defer st.Close()
				_, err = st.Write(big) // blocks at the window until read
				agentDone <- err
			}()
			// Wait until the slow stream's window is full.
			poll.Until(t, 10*time.Second, func() error {
				slow.mu.Lock()
				defer slow.mu.Unlock()
				if slow.buffered < testWindow {
					return fmt.Errorf("%d bytes buffered", slow.buffered)
				}
				return nil
			})
			fast, err := s.Open()
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				st, err := agent.AcceptStream()
				if err != nil {
					return
				}
				defer st.Close()
				_, _ = io.Copy(st, st)
			}()
			want := payload(2<<20, 2)
			go func() {
				_, _ = fast.Write(want)
				_ = fast.CloseWrite()
			}()
			_ = fast.SetReadDeadline(time.Now().Add(20 * time.Second))
			got, err := io.ReadAll(fast)
			if err != nil {
				t.Fatalf("the other stream, while one is stalled: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("echo: %d bytes, want %d", len(got), len(want))
			}
			// The slow stream then gets all its data.
			_ = slow.SetReadDeadline(time.Now().Add(20 * time.Second))
			got, err = io.ReadAll(slow)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, big) {
				t.Fatalf("slow stream: %d bytes, want %d", len(got), len(big))
			}
			if err := <-agentDone; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestSession_AnswersPings: yamux' keepalive pings get their answers.
func TestSession_AnswersPings(t *testing.T) {
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) {
			_, agent := pair(t, transport, testConfig(nil), agentConfig())
			for i := range 5 {
				if _, err := agent.Ping(); err != nil {
					t.Fatalf("ping %d: %v", i, err)
				}
			}
		})
	}
}

// TestSession_PeerEnds: the agent's close or GoAway ends the session and
// unblocks its streams' readers and writers.
func TestSession_PeerEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(*yamux.Session) error
	}{
		{"close", (*yamux.Session).Close},
		{"GoAway", (*yamux.Session).GoAway},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The agent never closes its streams: after GoAway the
			// session ends when the close timeout resets them.
			cfg := testConfig(nil)
			cfg.CloseTimeout = 2 * time.Second
			s, agent := pair(t, "tcp", cfg, agentConfig())
			reader, err := s.Open()
			if err != nil {
				t.Fatal(err)
			}
			writer, err := s.Open()
			if err != nil {
				t.Fatal(err)
			}
			for range 2 {
				if _, err := agent.AcceptStream(); err != nil {
					t.Fatal(err)
				}
			}
			readErr := make(chan error, 1)
			go func() { _, err := reader.Read(make([]byte, 10)); readErr <- err }()
			writeErr := make(chan error, 1)
			// More than the agent's window: blocks until the agent reads,
			// which it never does.
			go func() { _, err := writer.Write(make([]byte, 3*testWindow)); writeErr <- err }()
			poll.Until(t, 10*time.Second, func() error {
				writer.mu.Lock()
				defer writer.mu.Unlock()
				if writer.sendWindow != 0 {
					return errors.New("the writer has window left")
				}
				return nil
			})
			if err := tc.end(agent); err != nil {
				t.Fatal(err)
			}
			if tc.name == "GoAway" {
				// The session takes no new stream at once, and ends when
				// its streams are done.
				poll.Until(t, 10*time.Second, func() error {
					if !s.IsClosed() {
						return errors.New("session still open")
					}
					return nil
				})
				if _, err := s.Open(); !errors.Is(err, ErrGoneAway) {
					t.Fatalf("open after GoAway: %v, want ErrGoneAway", err)
				}
				_ = reader.Close()
				_ = writer.Close()
			}
			select {
			case <-s.Done():
			case <-time.After(20 * time.Second):
				t.Fatal("the session did not end")
			}
			for name, ch := range map[string]chan error{"read": readErr, "write": writeErr} {
				select {
				case err := <-ch:
					if err == nil {
						t.Errorf("blocked %s: no error", name)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("blocked %s not released", name)
				}
			}
			if _, err := s.Open(); err == nil {
				t.Fatal("opened a stream on an ended session")
			}
		})
	}
}

// TestSession_GoAwayWithoutStreams ends the session at once.
func TestSession_GoAwayWithoutStreams(t *testing.T) {
	s, agent := pair(t, "tcp", testConfig(nil), agentConfig())
	// yamux waits for its GoAway to be written; the session may end
	// first, on reading it.
	if err := agent.GoAway(); err != nil && !errors.Is(err, yamux.ErrSessionShutdown) {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the session did not end")
	}
	if !errors.Is(s.Err(), ErrGoneAway) {
		t.Fatalf("session ended with %v, want ErrGoneAway", s.Err())
	}
	select {
	case <-agent.CloseChan():
	case <-time.After(10 * time.Second):
		t.Fatal("the agent's session did not end")
	}
}

// TestSession_Deadlines: reads and writes blocked past their deadlines
// return timeouts, and go on once the deadline moves.
func TestSession_Deadlines(t *testing.T) {
	s, agent := pair(t, "tcp", testConfig(nil), agentConfig())
	st, ast := openAccepted(t, s, agent)
	for _, tc := range []struct {
		name string
		op   func() error
		set  func(time.Time) error
	}{
		{"read", func() error { _, err := st.Read(make([]byte, 1)); return err }, st.SetReadDeadline},
		// The agent reads nothing: the window runs out.
		{"write", func() error { _, err := st.Write(make([]byte, 2*testWindow)); return err }, st.SetWriteDeadline},
		{"read, deadline in the past", func() error { _, err := st.Read(make([]byte, 1)); return err }, func(time.Time) error { return st.SetReadDeadline(time.Now().Add(-time.Second)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.set(time.Now().Add(100 * time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			err := tc.op()
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("%s past the deadline: %v, want a timeout", tc.name, err)
			}
			if err := tc.set(time.Time{}); err != nil {
				t.Fatal(err)
			}
		})
	}
	// The stream still works after the timeouts: the agent reads what the
	// write got through and sends a byte.
	go func() { _, _ = io.Copy(io.Discard, ast) }()
	if _, err := ast.Write([]byte{42}); err != nil {
		t.Fatal(err)
	}
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 1)
	if _, err := io.ReadFull(st, b); err != nil || b[0] != 42 {
		t.Fatalf("read after the timeouts: %v %v", b, err)
	}
}

// TestSession_StreamTimeouts: a stream the agent never acknowledges, and
// one it never closes after the session did, are reset; the session goes
// on.
func TestSession_StreamTimeouts(t *testing.T) {
	cfg := testConfig(nil)
	cfg.OpenTimeout = 200 * time.Millisecond
	cfg.CloseTimeout = 200 * time.Millisecond
	t.Run("open", func(t *testing.T) {
		s, agent := pair(t, "tcp", cfg, agentConfig())
		// The agent's yamux acknowledges a stream when it accepts it,
		// which it does not.
		st, err := s.Open()
		if err != nil {
			t.Fatal(err)
		}
		requireResetAlone(t, st, agent, "a stream never acknowledged")
		poll.Until(t, 10*time.Second, func() error {
			if n := s.streamCount(); n != 0 {
				return fmt.Errorf("%d streams kept", n)
			}
			return nil
		})
		if s.IsClosed() {
			t.Fatal("the session closed")
		}
	})
	t.Run("close", func(t *testing.T) {
		s, agent := pair(t, "tcp", cfg, agentConfig())
		st, ast := openAccepted(t, s, agent)
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		// The agent sees the FIN (or, on a slow machine, the RST that
		// followed it already) and never closes its side.
		_ = ast.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := ast.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, yamux.ErrConnectionReset) {
			t.Fatalf("agent read after FIN: %v, want EOF", err)
		}
		poll.Until(t, 10*time.Second, func() error {
			if n := s.streamCount(); n != 0 {
				return fmt.Errorf("%d streams kept", n)
			}
			return nil
		})
		if _, err := ast.Write([]byte("late")); err == nil {
			// The RST may still be on its way; the next write fails.
			poll.Until(t, 10*time.Second, func() error {
				if _, err := ast.Write([]byte("late")); err == nil {
					return errors.New("the agent's stream was not reset")
				}
				return nil
			})
		}
		if _, err := agent.Ping(); err != nil {
			t.Fatalf("the session ended with the stream: %v", err)
		}
	})
}

// TestSession_AgentClosesFirst: the agent's FIN ends the server's reads,
// the server may still write, and the stream is forgotten once both sides
// closed.
func TestSession_AgentClosesFirst(t *testing.T) {
	s, agent := pair(t, "tcp", testConfig(nil), agentConfig())
	st, ast := openAccepted(t, s, agent)
	_ = ast.Close()
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := st.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read after the agent's FIN: %v, want EOF", err)
	}
	if _, err := st.Write([]byte("half-closed: the server may still send")); err != nil {
		t.Fatal(err)
	}
	_ = st.Close()
	poll.Until(t, 10*time.Second, func() error {
		if n := s.streamCount(); n != 0 {
			return fmt.Errorf("%d streams kept", n)
		}
		return nil
	})
}

// TestSession_AgentRefusesStream: a stream the agent resets (here: beyond
// its accept backlog) fails with ErrReset; the session goes on.
func TestSession_AgentRefusesStream(t *testing.T) {
	acfg := agentConfig()
	acfg.AcceptBacklog = 1
	s, agent := pair(t, "tcp", testConfig(nil), acfg)
	first, err := s.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := s.Open()
	if err != nil {
		t.Fatal(err)
	}
	requireResetAlone(t, second, agent, "a stream the agent refused")
	if s.IsClosed() {
		t.Fatal("the session closed")
	}
}

// TestSession_CloseLikeTCP: Close sends FIN when everything received was
// read, RST when not, and data that arrives after it resets the stream.
func TestSession_CloseLikeTCP(t *testing.T) {
	for _, tc := range []struct {
		name      string
		before    bool // the agent sends before the server's Close
		after     bool // the agent sends after it
		wantReset bool
	}{
		{"nothing pending", false, false, false},
		{"unread data", true, false, true},
		{"data after close", false, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, agent := pair(t, "tcp", testConfig(nil), agentConfig())
			st, ast := openAccepted(t, s, agent)
			if tc.before {
				if _, err := ast.Write([]byte("unread")); err != nil {
					t.Fatal(err)
				}
				poll.Until(t, 10*time.Second, func() error {
					st.mu.Lock()
					defer st.mu.Unlock()
					if st.buffered == 0 {
						return errors.New("nothing received")
					}
					return nil
				})
			}
			_ = st.Close()
			_ = ast.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := ast.Read(make([]byte, 1))
			if tc.after {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("agent read after the server's FIN: %v, want EOF", err)
				}
				if _, err := ast.Write([]byte("late")); err != nil {
					t.Fatal(err)
				}
				// The server's RST comes back.
				poll.Until(t, 10*time.Second, func() error {
					if _, err := ast.Write([]byte("x")); !errors.Is(err, yamux.ErrConnectionReset) {
						return fmt.Errorf("agent write: %w", err)
					}
					return nil
				})
				err = yamux.ErrConnectionReset
			}
			if got := errors.Is(err, yamux.ErrConnectionReset); got != tc.wantReset {
				t.Fatalf("agent read after the server's Close: %v, reset %v, want %v", err, got, tc.wantReset)
			}
			if !tc.wantReset {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("agent read after the server's FIN: %v, want EOF", err)
				}
				_ = ast.Close()
			}
			poll.Until(t, 10*time.Second, func() error {
				if n := s.streamCount(); n != 0 {
					return fmt.Errorf("%d streams kept", n)
				}
				return nil
			})
			if s.IsClosed() {
				t.Fatal("the session closed")
			}
		})
	}
}
