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

// Command baremetal_sd is the discovery server and the host agent of
// baremetal_sd: Prometheus service discovery, certificates and relaying for
// bare-metal fleets.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/alecthomas/units"
	"github.com/prometheus/common/promslog"
	promslogflag "github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"

	"github.com/baremetal-sd/baremetal_sd/agent"
	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/etcd"
	"github.com/baremetal-sd/baremetal_sd/internal/fileutil"
	"github.com/baremetal-sd/baremetal_sd/server"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

// serverGCPercent is the server's GOGC unless the environment sets one.
const serverGCPercent = 75

func run(args []string) int {
	app := kingpin.New("baremetal_sd", "Prometheus service discovery, certificates and relaying for bare-metal fleets.")
	app.Version(version.Print("baremetal_sd"))
	app.HelpFlag.Short('h')
	logConfig := &promslog.Config{}
	promslogflag.AddFlags(app, logConfig)

	serverCmd := app.Command("server", "Run the discovery server: agent registry, certificate authority and http_sd.")
	srv := server.Config{
		Web: kingpinflag.AddFlags(serverCmd, ":9955"),
	}
	// The toolkit's help offers http and vsock; these roles speak TLS only.
	serverCmd.GetFlag("web.listen-address").Help("Address to serve the API, http_sd and the status page on, over TLS only (repeatable). Example: `:9955` or `[::1]:9955`.")
	serverCmd.Flag("data.dir", "Directory for the server CA, the issuing CAs for agents and clients, token key, serving certificate and registry; created on first start.").Default("data").StringVar(&srv.DataDir)
	serverCmd.Flag("tls.server-name", "DNS name or IP of the auto-created serving certificate (repeatable; default: the hostname, localhost, 127.0.0.1, ::1). Agents may not register these names, loopback ones aside: use one in Prometheus' proxy_url for tunnels.").StringsVar(&srv.ServerNames)
	serverCmd.Flag("storage.backend", "Registry store: bolt (embedded file in --data.dir), etcd (shared by several server replicas) or memory (lost on restart).").Default("bolt").EnumVar(&srv.StorageBackend, "bolt", "etcd", "memory")
	serverCmd.Flag("etcd.endpoints", "etcd client URL, for --storage.backend=etcd (repeatable or comma-separated).").StringsVar(&srv.Etcd.Endpoints)
	serverCmd.Flag("etcd.prefix", "Key prefix of the registry in etcd; replicas of one fleet share it.").Default(etcd.DefaultPrefix).StringVar(&srv.Etcd.Prefix)
	serverCmd.Flag("etcd.replica-id", "Name of this replica among those sharing the prefix ([a-zA-Z0-9._-]; default: the hostname). Keep it across restarts; two running replicas must not share it.").StringVar(&srv.Etcd.ReplicaID)
	serverCmd.Flag("etcd.ca-file", "CA certificate that verifies the etcd servers (https:// endpoints; default: the system roots).").StringVar(&srv.Etcd.CAFile)
	serverCmd.Flag("etcd.cert-file", "Client certificate for etcd, with --etcd.key-file.").StringVar(&srv.Etcd.CertFile)
	serverCmd.Flag("etcd.key-file", "Key of the etcd client certificate, with --etcd.cert-file.").StringVar(&srv.Etcd.KeyFile)
	serverCmd.Flag("etcd.username", "etcd user name, with --etcd.password-file.").StringVar(&srv.Etcd.Username)
	serverCmd.Flag("etcd.password-file", "File holding the etcd password of --etcd.username.").StringVar(&srv.Etcd.PasswordFile)
	serverCmd.Flag("etcd.timeout", "Bound on every etcd operation; past it a registration is answered 503.").Default("5s").DurationVar(&srv.Etcd.Timeout)
	serverCmd.Flag("agent.ttl", "How long an agent stays in http_sd without a heartbeat.").Default("5m").DurationVar(&srv.AgentTTL)
	serverCmd.Flag("agent.retention", "How long an expired agent stays listed for operators before it is purged (kept as a deregistered tombstone instead while one of its certificates could still register).").Default("24h").DurationVar(&srv.Retention)
	serverCmd.Flag("cert.ttl", "Lifetime of agent certificates; agents renew at 2/3 of it.").Default("24h").DurationVar(&srv.CertTTL)
	serverCmd.Flag("cert.renew-grace", "How long after expiry an agent may still renew by proving possession of its key.").Default("720h").DurationVar(&srv.RenewGrace)
	serverCmd.Flag("registry.flush-interval", "How often batched heartbeats are written to the store, at most a quarter of --agent.ttl (default: 5s with bolt, 30s with etcd, capped at that quarter).").DurationVar(&srv.FlushInterval)
	serverCmd.Flag("sd.file.path", "Also write the target groups to this file for file_sd_configs.").StringVar(&srv.SDFilePath)
	serverCmd.Flag("sd.allow-anonymous", "Serve http_sd without a client certificate or token (not recommended).").BoolVar(&srv.AnonymousSD)

	tokenCmd := app.Command("token", "Manage tokens.")
	tokenCreate := tokenCmd.Command("create", "Create a token, signed with the server's token key, and print it.")
	var (
		tokenDataDir string
		tokenScope   string
		tokenLabels  = map[string]string{} // kingpin fills, but never creates, the map
		spec         ca.TokenSpec
	)
	tokenCreate.Flag("data.dir", "The server's data directory.").Default("data").StringVar(&tokenDataDir)
	tokenCreate.Flag("scope", "What the token allows: enroll (agents), discovery (Prometheus http_sd) or admin.").Default("enroll").EnumVar(&tokenScope, "enroll", "discovery", "admin")
	tokenCreate.Flag("agent.id", "Fix the id of the agent that enrolls with this token.").StringVar(&spec.AgentID)
	tokenCreate.Flag("ttl", "How long the token is valid.").Default("1h").DurationVar(&spec.TTL)
	tokenCreate.Flag("single-use", "The token can enroll one agent only.").BoolVar(&spec.SingleUse)
	var tokenOutput string
	tokenCreate.Flag("output", "Write the token to this file, created with mode 0600, instead of printing it.").StringVar(&tokenOutput)
	tokenCreate.Flag("label", "Label KEY=VALUE the agent must carry (repeatable).").StringMapVar(&tokenLabels)

	certCmd := app.Command("cert", "Manage client certificates.")
	certIssue := certCmd.Command("issue", "Issue a client certificate for Prometheus or an operator.")
	var (
		certDataDir, certName, certOutDir, certRole string
		certTTL                                     time.Duration
	)
	certIssue.Flag("data.dir", "The server's data directory.").Default("data").StringVar(&certDataDir)
	certIssue.Flag("name", "Name of the client, used as the certificate's common name and file names.").Required().StringVar(&certName)
	certIssue.Flag("out.dir", "Directory for NAME.crt, NAME.key, ca.crt (verifies the server), agent-ca.crt (verifies agents) and tunnel-ca.crt (both, for scrapes through tunnels).").Required().StringVar(&certOutDir)
	certIssue.Flag("role", "discovery (read http_sd, scrape agents) or admin (also manage agents).").Default("discovery").EnumVar(&certRole, "discovery", "admin")
	certIssue.Flag("ttl", "Lifetime of the certificate.").Default("8760h").DurationVar(&certTTL)

	agentCmd := app.Command("agent", "Run the host agent: enroll, keep the certificate fresh, heartbeat and relay the local exporters over TLS.")
	agt := agent.Config{
		Web:    kingpinflag.AddFlags(agentCmd, ":9956"),
		Labels: map[string]string{}, // kingpin's StringMapVar fills, never allocates, the map
	}
	agentCmd.GetFlag("web.listen-address").Help("Address to relay the exporters and serve the agent's metrics on, over TLS only (repeatable; the first one's port is registered). Example: `:9956`.")
	agentCmd.Flag("discovery.url", "Base URL of a discovery server, https://HOST:PORT (repeatable: replicas, tried in turn).").Required().StringsVar(&agt.DiscoveryURLs)
	agentCmd.Flag("discovery.token-file", "File holding the enrollment token; read whenever the agent needs to enroll.").StringVar(&agt.TokenFile)
	agentCmd.Flag("discovery.ca-file", "CA certificate that verifies the discovery servers (default: the system roots).").StringVar(&agt.CAFile)
	agentCmd.Flag("agent.state-dir", "Directory for the agent's key, certificate and state; created on first start.").Default("agent").StringVar(&agt.StateDir)
	agentCmd.Flag("relay.config.file", "Relay configuration: the exporters to relay.").StringVar(&agt.RelayConfigFile)
	agentCmd.Flag("agent.hostname", "Hostname to register and certify (default: the system hostname).").StringVar(&agt.Hostname)
	agentCmd.Flag("agent.address", "Host or IP Prometheus scrapes (default: the address the server sees the agent's requests come from).").StringVar(&agt.Address)
	agentCmd.Flag("agent.label", "Label KEY=VALUE, exposed as __meta_baremetal_sd_label_KEY (repeatable).").StringMapVar(&agt.Labels)
	agentCmd.Flag("tunnel", "on: Prometheus cannot reach this host; keep a tunnel to every discovery server and be scraped through them (docs/tunnels.md). off: scraped directly.").Default("off").EnumVar(&agt.Tunnel, "off", "on")
	agentCmd.Flag("web.enable-lifecycle", "Enable POST /-/reload, which re-reads the relay config and the web config as SIGHUP does (with the agent's own web config, an admin client certificate is required).").Default("false").BoolVar(&agt.EnableLifecycle)
	var agentMemoryLimit units.Base2Bytes
	agentCmd.Flag("agent.memory-limit", "Soft limit on the agent's Go memory (heap and runtime, not the binary's pages), as GOMEMLIMIT, which takes precedence when set. The relay's series caches (series_cache_bytes per exporter with metric_relabel_configs) are added to it. Past it the garbage collector runs more often; 0 turns the limit off.").Default("13MiB").BytesVar(&agentMemoryLimit)
	agentCmd.Flag("agent.deregister-on-shutdown", "Remove the agent from discovery when it stops (default: on; --no-agent.deregister-on-shutdown keeps it listed until its TTL runs out).").Default("true").BoolVar(&agt.DeregisterOnShutdown)

	statusCmd := app.Command("agent-status", "Show the local agent's registration state, with the reason, from its state directory; exits 0 when it is registered. Works before enrollment and while the agent is stopped.")
	var statusDir string
	statusCmd.Flag("agent.state-dir", "The agent's state directory.").Default("agent").StringVar(&statusDir)

	agentsCmd := app.Command("agents", "List and manage agents through the server's admin API.")
	var cli server.AgentsCLI
	agentsCmd.Flag("server.url", "Base URL of the discovery server.").Default("https://localhost:9955").StringVar(&cli.ServerURL)
	var agentsDataDirSet bool
	agentsCmd.Flag("data.dir", "The server's data directory, on the server host: trust its CA and mint a short-lived admin token from its token key. The default is used only if it holds a ca.crt, so that a certificate or token works from elsewhere.").Default("data").IsSetByUser(&agentsDataDirSet).StringVar(&cli.DataDir)
	agentsCmd.Flag("tls.ca-file", "CA certificate that verifies the server (default: the data dir's ca.crt).").StringVar(&cli.CAFile)
	agentsCmd.Flag("tls.cert-file", "Admin client certificate (cert issue --role=admin).").StringVar(&cli.CertFile)
	agentsCmd.Flag("tls.key-file", "Key of the admin client certificate.").StringVar(&cli.KeyFile)
	agentsCmd.Flag("token-file", "File holding an admin token (token create --scope=admin).").StringVar(&cli.TokenFile)
	agentsCmd.Flag("output", "Output format: table or json.").Short('o').Default("table").EnumVar(&cli.Output, "table", "json")
	agentsList := agentsCmd.Command("list", "List agents with their state.")
	agentsRevoke := agentsCmd.Command("revoke", "Revoke an agent: its certificates are refused and it leaves http_sd.")
	revokeID := agentsRevoke.Arg("agent", "Agent id or hostname (a hostname several agents share lists their ids).").Required().String()
	agentsMaint := agentsCmd.Command("maintenance", "Turn an agent's maintenance flag on or off.")
	maintID := agentsMaint.Arg("agent", "Agent id or hostname (a hostname several agents share lists their ids).").Required().String()
	maintOn := agentsMaint.Arg("state", "on or off.").Required().Enum("on", "off")

	// SIGHUP reloads the server and the agent. Catch it before anything
	// else: its default action would kill the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	cmd, err := app.Parse(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "baremetal_sd: %v, try --help\n", explainParseError(app, args, err))
		return 2
	}
	logger := promslog.New(logConfig)

	switch cmd {
	case serverCmd.FullCommand():
		if len(srv.ServerNames) == 0 {
			srv.ServerNames = defaultServerNames()
		} else {
			// Names an operator chose for the server are its own; the
			// defaults include the hostname, which an agent on the server
			// host registers.
			srv.ReservedNames = srv.ServerNames
		}
		srv.Logger = logger
		srv.Reload = hup
		logger.Info("Starting baremetal_sd server", "version", version.Info())
		logger.Info("Build context", "build_context", version.BuildContext())
		// Most of the server's heap is the registry, which lives as long as
		// the process; the garbage is per request. Go's default GOGC=100
		// lets the heap grow by the whole registry before collecting, so
		// the server uses 75 unless GOGC is set, as Prometheus does.
		if _, set := os.LookupEnv("GOGC"); !set {
			debug.SetGCPercent(serverGCPercent)
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := server.Run(ctx, srv); err != nil {
			logger.Error("Server failed", "err", err)
			return 1
		}
		return 0

	case tokenCreate.FullCommand():
		spec.Scope = ca.Scope(tokenScope)
		spec.Labels = tokenLabels
		tok, err := server.CreateToken(tokenDataDir, spec)
		if err != nil {
			fmt.Fprintf(os.Stderr, "baremetal_sd: create token: %v\n", err)
			return 1
		}
		if tokenOutput != "" {
			if err := fileutil.WriteAtomic(tokenOutput, []byte(tok+"\n"), 0o600); err != nil {
				fmt.Fprintf(os.Stderr, "baremetal_sd: write token: %v\n", err)
				return 1
			}
			return 0
		}
		fmt.Println(tok)
		return 0

	case agentCmd.FullCommand():
		agt.Logger = logger
		agt.Reload = hup
		// Relaying makes garbage in proportion to the bytes relayed, and
		// Go's default GOGC=100 lets the heap double before collecting: a
		// soft limit keeps an agent's footprint small on hosts it shares
		// with the workloads it watches.
		if _, set := os.LookupEnv("GOMEMLIMIT"); !set {
			agt.MemoryLimit = int64(agentMemoryLimit)
		}
		logger.Info("Starting baremetal_sd agent", "version", version.Info())
		logger.Info("Build context", "build_context", version.BuildContext())
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := agent.Run(ctx, agt); err != nil {
			logger.Error("Agent failed", "err", err)
			return 1
		}
		return 0

	case statusCmd.FullCommand():
		registered, err := agent.PrintStatus(statusDir, os.Stdout)
		if err != nil {
			fmt.Fprintf(os.Stderr, "baremetal_sd: %v\n", err)
			return 1
		}
		if !registered {
			return 1
		}
		return 0

	case agentsList.FullCommand(), agentsRevoke.FullCommand(), agentsMaint.FullCommand():
		cli.DataDirIsDefault = !agentsDataDirSet
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		var err error
		switch cmd {
		case agentsList.FullCommand():
			err = cli.List(ctx, os.Stdout)
		case agentsRevoke.FullCommand():
			err = cli.Revoke(ctx, *revokeID, os.Stdout)
		default:
			err = cli.Maintenance(ctx, *maintID, *maintOn == "on", os.Stdout)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "baremetal_sd: %v\n", err)
			return 1
		}
		return 0

	case certIssue.FullCommand():
		if err := server.IssueClientCert(certDataDir, certName, ca.Role(certRole), certTTL, certOutDir); err != nil {
			fmt.Fprintf(os.Stderr, "baremetal_sd: issue certificate: %v\n", err)
			return 1
		}
		fmt.Printf("Wrote %s/%s.crt, %s/%s.key, %s/ca.crt (the server CA, for http_sd), %s/agent-ca.crt (the agent CA, for scrape jobs) and %s/tunnel-ca.crt (both, for scrape jobs through tunnels)\n", certOutDir, certName, certOutDir, certName, certOutDir, certOutDir, certOutDir)
		return 0
	}
	return 0
}

// defaultServerNames are the names the auto-created serving certificate
// covers when none are given.
func defaultServerNames() []string {
	names := []string{"localhost", "127.0.0.1", "::1"}
	if h, err := os.Hostname(); err == nil && h != "" && !strings.EqualFold(h, "localhost") {
		names = append([]string{h}, names...)
	}
	return names
}

// explainParseError names the flag or argument whose value kingpin
// refused: kingpin reports the value's own error alone ("time: invalid
// duration \"x\""), which does not say where the value was given. The
// value is set again to find it; the process exits after this anyway.
func explainParseError(app *kingpin.Application, args []string, err error) error {
	pc, perr := app.ParseContext(args)
	if perr != nil || pc == nil {
		return err
	}
	for _, el := range pc.Elements {
		var name string
		var value kingpin.Value
		switch c := el.Clause.(type) {
		case *kingpin.FlagClause:
			name, value = "--"+c.Model().Name, c.Model().Value
		case *kingpin.ArgClause:
			name, value = "<"+c.Model().Name+">", c.Model().Value
		default:
			continue
		}
		if el.Value == nil || value == nil {
			continue
		}
		if verr := value.Set(*el.Value); verr != nil && verr.Error() == err.Error() {
			// The time package prefixes its errors with its name.
			return fmt.Errorf("%s: %s", name, strings.TrimPrefix(verr.Error(), "time: "))
		}
	}
	return err
}
