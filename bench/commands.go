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

package bench

import (
	"context"
	"io"
	"log/slog"
	"os"

	"github.com/alecthomas/kingpin/v2"
)

// Commands are the load generator's commands and their flags.
type Commands struct {
	// Out receives the result tables; os.Stdout unless replaced.
	Out io.Writer

	register  *kingpin.CmdClause
	heartbeat *kingpin.CmdClause
	httpsd    *kingpin.CmdClause
	populate  *kingpin.CmdClause
	converge  *kingpin.CmdClause
	lastseen  *kingpin.CmdClause
	conns     *kingpin.CmdClause
	tunnels   *kingpin.CmdClause

	reg RegisterConfig
	hb  HeartbeatConfig
	sd  HTTPSDConfig
	pop PopulateConfig
	cv  ConvergeConfig
	ls  LastSeenConfig
	cn  ConnsConfig
	tn  TunnelsConfig
}

// defaultServerURL is where `baremetal_sd server` listens by default.
const defaultServerURL = "https://127.0.0.1:9955"

// AddCommands adds the load generator's commands to app, the
// baremetal_sd-bench command; the release binary does not carry them.
func AddCommands(app *kingpin.Application) *Commands {
	c := &Commands{Out: os.Stdout}

	target := func(cmd *kingpin.CmdClause, url, dataDir *string, pid *int) {
		cmd.Flag("server.url", "URL of the server under test (loopback only).").Default(defaultServerURL).StringVar(url)
		cmd.Flag("data.dir", "The server's data directory: CA, token key.").Default("data").StringVar(dataDir)
		cmd.Flag("server.pid", "PID of the server, to report its CPU time and memory from /proc.").IntVar(pid)
	}

	c.register = app.Command("register", "Measure registrations per second: key, CSR, token, new TLS connection each.")
	target(c.register, &c.reg.ServerURL, &c.reg.DataDir, &c.reg.ServerPID)
	c.register.Flag("count", "Registrations to make.").Default("5000").IntVar(&c.reg.Count)
	c.register.Flag("concurrency", "Concurrent clients.").Default("64").IntVar(&c.reg.Concurrency)
	c.register.Flag("duration", "Upper bound on the run.").Default("2m").DurationVar(&c.reg.Duration)
	c.register.Flag("keep-alive", "Reuse one connection per client instead of a new TLS connection per registration.").BoolVar(&c.reg.KeepAlive)
	c.register.Flag("pregenerate", "Generate all agent keys and CSRs before the clock starts.").BoolVar(&c.reg.Pregenerate)
	c.register.Flag("single-use", "Give each agent its own single-use token (adds a durable token claim).").BoolVar(&c.reg.SingleUse)
	c.register.Flag("first", "Number of the first simulated host.").Default("0").IntVar(&c.reg.First)
	c.register.Flag("save", "Write the enrolled agents (id, key, certificate) to this file for bench heartbeat --agents.file.").StringVar(&c.reg.SaveFile)

	c.heartbeat = app.Command("heartbeat", "Measure heartbeats per second and latency: over keep-alive mTLS, or paced like a fleet with a new connection per heartbeat.")
	target(c.heartbeat, &c.hb.ServerURL, &c.hb.DataDir, &c.hb.ServerPID)
	c.heartbeat.Flag("agents", "Agents to enroll first; workers share their certificates.").Default("256").IntVar(&c.hb.Agents)
	c.heartbeat.Flag("agents.file", "Heartbeat as the agents in this file (bench register --save) instead of enrolling new ones (repeatable).").StringsVar(&c.hb.AgentFiles)
	c.heartbeat.Flag("interval", "Heartbeat every agent once per interval, spread evenly, as a fleet does (0: as fast as the workers go).").DurationVar(&c.hb.Interval)
	c.heartbeat.Flag("new-connection", "A new mTLS connection per heartbeat, as agents make after 30 s idle; always on with --interval.").BoolVar(&c.hb.NewConnection)
	c.heartbeat.Flag("resume", "On new connections, resume each agent's previous TLS session as the agent does; --no-resume makes every handshake a full one.").Default("true").BoolVar(&c.hb.Resume)
	c.heartbeat.Flag("concurrency", "Workers, each with its own keep-alive connection.").Default("64").IntVar(&c.hb.Concurrency)
	c.heartbeat.Flag("warmup", "Heartbeats before the measurement starts.").Default("2s").DurationVar(&c.hb.Warmup)
	c.heartbeat.Flag("duration", "Measured time.").Default("20s").DurationVar(&c.hb.Duration)
	c.heartbeat.Flag("count", "Upper bound on measured heartbeats.").Default("10000000").IntVar(&c.hb.Count)
	c.heartbeat.Flag("status", "Status sent with each heartbeat; empty sends no body.").Default("ok").StringVar(&c.hb.Status)
	c.heartbeat.Flag("first", "Number of the first simulated host.").Default("1000000").IntVar(&c.hb.First)

	c.httpsd = app.Command("httpsd", "Measure http_sd fetches from the cache and after a change; report server memory.")
	target(c.httpsd, &c.sd.ServerURL, &c.sd.DataDir, &c.sd.ServerPID)
	c.httpsd.Flag("count", "Cached fetches per encoding.").Default("20").IntVar(&c.sd.Count)
	c.httpsd.Flag("changes", "Registrations, each followed by a fetch that rebuilds (alternating identity and gzip).").Default("20").IntVar(&c.sd.Changes)
	c.httpsd.Flag("duration", "Upper bound on the run.").Default("5m").DurationVar(&c.sd.Duration)
	c.httpsd.Flag("first", "Number of the first simulated host registered as a change.").Default("2000000").IntVar(&c.sd.First)

	c.populate = app.Command("populate", "Write synthetic agents into a stopped server's bolt registry.")
	c.populate.Flag("data.dir", "The server's data directory.").Default("data").StringVar(&c.pop.DataDir)
	c.populate.Flag("count", "Agents to write.").Default("100000").IntVar(&c.pop.Count)
	c.populate.Flag("concurrency", "Concurrent writers.").Default("64").IntVar(&c.pop.Concurrency)
	c.populate.Flag("duration", "Upper bound on the run.").Default("10m").DurationVar(&c.pop.Duration)
	c.populate.Flag("first", "Number of the first synthetic agent.").Default("0").IntVar(&c.pop.First)

	c.converge = app.Command("converge", "Measure how long a registration through one replica takes to reach another replica's http_sd.")
	c.converge.Flag("server.url", "URL of the replica to register through (loopback only).").Default(defaultServerURL).StringVar(&c.cv.ServerURL)
	c.converge.Flag("peer.url", "URL of the replica whose http_sd is read (loopback only).").Required().StringVar(&c.cv.PeerURL)
	c.converge.Flag("data.dir", "A replica's data directory: the shared CA and token key.").Default("data").StringVar(&c.cv.DataDir)
	c.converge.Flag("count", "Registrations to follow.").Default("20").IntVar(&c.cv.Count)
	c.converge.Flag("duration", "Upper bound on the run.").Default("2m").DurationVar(&c.cv.Duration)
	c.converge.Flag("poll-interval", "Pause between two reads of the peer's http_sd.").Default("1ms").DurationVar(&c.cv.PollInterval)
	c.converge.Flag("first", "Number of the first simulated host.").Default("3000000").IntVar(&c.cv.First)

	c.lastseen = app.Command("lastseen", "Measure how long a heartbeat through one etcd replica takes to show in another replica's last-seen time.")
	c.lastseen.Flag("server.url", "URL of the replica to heartbeat through (loopback only).").Default(defaultServerURL).StringVar(&c.ls.ServerURL)
	c.lastseen.Flag("peer.url", "URL of the replica whose agent list is read (loopback only).").Required().StringVar(&c.ls.PeerURL)
	c.lastseen.Flag("data.dir", "A replica's data directory: the shared CA and token key.").Default("data").StringVar(&c.ls.DataDir)
	c.lastseen.Flag("count", "Heartbeats to follow.").Default("5").IntVar(&c.ls.Count)
	c.lastseen.Flag("duration", "Upper bound on the run.").Default("10m").DurationVar(&c.ls.Duration)
	c.lastseen.Flag("spread", "Random pause between probes, up to this long: the writer's flush interval samples its cycle evenly.").Default("30s").DurationVar(&c.ls.Spread)
	c.lastseen.Flag("first", "Number of the probe host.").Default("3500000").IntVar(&c.ls.First)

	c.conns = app.Command("conns", "Measure the server memory that idle keep-alive mTLS connections hold.")
	target(c.conns, &c.cn.ServerURL, &c.cn.DataDir, &c.cn.ServerPID)
	c.conns.Flag("count", "Connections to open and hold.").Default("2000").IntVar(&c.cn.Count)
	c.conns.Flag("hold", "How long they idle before the server's memory is read.").Default("5s").DurationVar(&c.cn.Hold)

	c.tunnels = app.Command("tunnels", "Measure the server memory that idle agent tunnels hold and, with --restart, how long agents take to reconnect after a server restart.")
	target(c.tunnels, &c.tn.ServerURL, &c.tn.DataDir, &c.tn.ServerPID)
	c.tunnels.Flag("count", "Agents to register for tunnels, each keeping one.").Default("10000").IntVar(&c.tn.Count)
	c.tunnels.Flag("hold", "How long the tunnels idle before the server's memory is read.").Default("5s").DurationVar(&c.tn.Hold)
	c.tunnels.Flag("restart", "Then wait for the server to be restarted (by the operator or a script) and measure until every tunnel is back.").BoolVar(&c.tn.Restart)
	c.tunnels.Flag("timeout", "Upper bound on each phase.").Default("5m").DurationVar(&c.tn.Timeout)
	return c
}

// Run runs the selected command if it is one of ours; handled is false for
// any other command.
func (c *Commands) Run(ctx context.Context, selected string, logger *slog.Logger) (handled bool, err error) {
	switch selected {
	case c.register.FullCommand():
		return true, RunRegister(ctx, c.reg, c.Out)
	case c.heartbeat.FullCommand():
		return true, RunHeartbeat(ctx, c.hb, c.Out)
	case c.httpsd.FullCommand():
		return true, RunHTTPSD(ctx, c.sd, c.Out)
	case c.conns.FullCommand():
		return true, RunConns(ctx, c.cn, c.Out)
	case c.tunnels.FullCommand():
		return true, RunTunnels(ctx, c.tn, c.Out)
	case c.converge.FullCommand():
		return true, RunConverge(ctx, c.cv, c.Out)
	case c.lastseen.FullCommand():
		return true, RunLastSeen(ctx, c.ls, c.Out)
	case c.populate.FullCommand():
		cfg := c.pop
		cfg.Logger = logger
		return true, RunPopulate(ctx, cfg, c.Out)
	}
	return false, nil
}
