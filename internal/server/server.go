package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/api"
	"github.com/deskrun/deskrun/internal/control"
	"github.com/deskrun/deskrun/internal/dispatch"
	"github.com/deskrun/deskrun/internal/notify"
	"github.com/deskrun/deskrun/internal/pki"
	"github.com/deskrun/deskrun/internal/store"
	"github.com/deskrun/deskrun/internal/store/sqlite"
	"github.com/deskrun/deskrun/internal/web"
	"github.com/deskrun/deskrun/internal/wire"
)

// BootstrapTokenFile is where a new server writes its first admin token
// (0600), since no token exists yet to create one with.
const BootstrapTokenFile = "admin.token"

// Server is a running control plane.
type Server struct {
	Config  Config
	Log     *slog.Logger
	Version string
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	Store   store.Store
	Hub     *dispatch.Hub
	Control *control.Service
	TLS     *pki.Server
	// Addr is the address actually listened on (useful with port 0).
	Addr string
	// AdminToken is set when this start created the bootstrap token.
	AdminToken string

	retest    *time.Timer
	schedCtx  context.Context
	schedStop context.CancelFunc
	http      *http.Server
	ln        net.Listener
	done      chan struct{}
	stopOnce  sync.Once
}

// Start opens the store, migrates it, makes or loads the TLS identity and
// starts serving. It returns once the listener is up.
func (s *Server) Start(ctx context.Context) error {
	if s.Now == nil {
		s.Now = time.Now
	}
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	cfg := &s.Config
	urlDerived := cfg.URL == ""
	if err := cfg.Validate(); err != nil {
		return err
	}
	// Listen first: with port 0 the URL (which goes into enrollment tokens
	// and the certificate) must name the port the kernel chose.
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	s.Addr = ln.Addr().String()
	s.ln = ln
	if urlDerived {
		cfg.URL = "https://" + s.Addr
	}
	ok := false
	defer func() {
		if !ok {
			ln.Close()
		}
	}()
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	var opts []sqlite.Option
	if strings.EqualFold(cfg.SQLiteSync, "NORMAL") {
		opts = append(opts, sqlite.WithSynchronousNormal())
	}
	db, err := sqlite.Open(ctx, cfg.StorePath(), opts...)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	s.Store = db
	if applied, err := db.Migrate(ctx); err != nil {
		db.Close()
		return fmt.Errorf("migrate store: %w", err)
	} else if len(applied) > 0 {
		s.Log.Info("store migrated", "versions", applied)
	}

	host, _, _ := net.SplitHostPort(cfg.Listen)
	names := append([]string{}, cfg.Names...)
	if host != "" && host != "0.0.0.0" && host != "::" {
		names = append(names, host)
	}
	if u := urlHost(cfg.URL); u != "" {
		names = append(names, u)
	}
	s.TLS, err = pki.Ensure(filepath.Join(cfg.Data, "tls"), names, s.Now())
	if err != nil {
		db.Close()
		return fmt.Errorf("tls: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "deskrun_store_commits_total",
			Help: "SQLite commits (each one WAL append and, with synchronous=FULL, one fsync)."},
			func() float64 { c, _ := db.CommitStats(); return float64(c) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "deskrun_store_write_transactions_total",
			Help: "Write transactions committed; with deskrun_store_commits_total, how many shared a commit."},
			func() float64 { _, t := db.CommitStats(); return float64(t) }))
	hcfg := dispatch.DefaultConfig()
	hcfg.HeartbeatInterval = cfg.HeartbeatInterval
	hcfg.Lease = cfg.AgentLease
	hcfg.ServerVersion = s.Version
	s.Hub = dispatch.New(hcfg, db, s.Log, s.Now, dispatch.NewMetrics(reg))
	if err := s.Hub.Start(ctx); err != nil {
		db.Close()
		return err
	}
	policy := control.DefaultConnectionPolicy()
	policy.TestTimeout, policy.ExpiryWarnDays = cfg.ConnectionTestTimeout, cfg.ExpiryWarnDays
	policy.RetestInterval, policy.RetestBroken = cfg.RetestInterval, cfg.RetestBroken
	s.Control = &control.Service{Store: db, Hub: s.Hub, Log: s.Log, Now: s.Now, ServerURL: cfg.URL, CAFingerprint: s.TLS.Fingerprint,
		ServerVersion: s.Version, Conn: policy,
		Notify: &notify.Notifier{URL: cfg.NotifyURL, Secret: []byte(cfg.NotifySecret), Log: s.Log},
		Runs:   control.RunPolicy{QueueTimeout: cfg.QueueTimeout, MaxLogBytes: cfg.MaxRunLogBytes}}
	s.Hub.Listener = s.Control
	s.schedCtx, s.schedStop = context.WithCancel(context.WithoutCancel(ctx))
	s.Control.StartScheduler(s.schedCtx)
	if s.Control.Secrets, err = control.LoadSecretBox(filepath.Join(cfg.Data, "secrets.key")); err != nil {
		s.Hub.Stop()
		db.Close()
		return err
	}
	s.Control.Flows = control.DefaultFlowPolicy()
	if err := s.Control.StartFlows(s.schedCtx); err != nil {
		s.Hub.Stop()
		db.Close()
		return fmt.Errorf("start flows: %w", err)
	}
	if err := s.bootstrap(ctx); err != nil {
		s.Hub.Stop()
		db.Close()
		return err
	}

	apiH := api.New(api.Config{MaxBodyBytes: cfg.MaxBodyBytes, Version: s.Version}, s.Control, s.Log, reg)
	mux := http.NewServeMux()
	mux.Handle("/api/", apiH)
	mux.Handle("/hooks/", apiH) // webhooks of cloud flows
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, wire.Health{Status: "ok", Version: s.Version})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.Store.Ping(r.Context()); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, wire.Health{Status: "unavailable", Detail: "store: " + err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, wire.Health{Status: "ready", Version: s.Version})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	console, err := web.New(s.Control, s.Log, s.Version)
	if err != nil {
		s.schedStop()
		s.Hub.Stop()
		db.Close()
		return fmt.Errorf("console: %w", err)
	}
	mux.Handle("/", console) // the web console; /api/ keeps the API's error envelope

	ok = true
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{s.TLS.Cert}, NextProtos: []string{"h2", "http/1.1"}}
	s.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.Log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		err := s.http.Serve(&redirectListener{Listener: ln, tls: tlsCfg, url: cfg.URL})
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.Log.Error("serve", "err", err)
		}
	}()
	if cfg.RetestInterval > 0 {
		s.retest = time.AfterFunc(min(cfg.RetestInterval, time.Hour), s.retestLoop)
	}
	s.Log.Info("server started", "addr", s.Addr, "url", cfg.URL, "store", cfg.Store, "ca_fingerprint", s.TLS.Fingerprint)
	return nil
}

// bootstrap creates the first admin token of an empty server and writes it
// to DATA/admin.token (0600).
func (s *Server) bootstrap(ctx context.Context) error {
	path := filepath.Join(s.Config.Data, BootstrapTokenFile)
	ts, err := s.Store.ListTokens(ctx, deskrun.TokenAPI)
	if err != nil {
		return err
	}
	if len(ts) > 0 {
		return nil
	}
	_, secret, err := s.Control.CreateToken(ctx, wire.TokenCreate{Kind: string(deskrun.TokenAPI), Name: "bootstrap admin", Role: string(deskrun.RoleAdmin)})
	if err != nil {
		return fmt.Errorf("bootstrap token: %w", err)
	}
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		return fmt.Errorf("write bootstrap token: %w", err)
	}
	s.AdminToken = secret
	s.Log.Info("bootstrap admin token written", "path", path)
	return nil
}

// retestLoop re-tests connections that are due, then re-arms itself.
func (s *Server) retestLoop() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	if n, err := s.Control.RetestDue(ctx); err != nil {
		s.Log.Error("periodic re-test", "err", err)
	} else if n > 0 {
		s.Log.Info("periodic re-test", "connections", n)
	}
	s.retest.Reset(min(s.Config.RetestInterval, time.Hour))
}

// Stop stops serving and closes the store. It is safe to call twice.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.retest != nil {
			s.retest.Stop()
		}
		if s.schedStop != nil {
			s.schedStop()
		}
		if s.Hub != nil {
			s.Hub.Stop()
		}
		if s.http != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = s.http.Shutdown(ctx)
			cancel()
			_ = s.http.Close()
			<-s.done
		}
		if s.Store != nil {
			_ = s.Store.Close()
		}
	})
}

func urlHost(u string) string {
	u = strings.TrimPrefix(u, "https://")
	if i := strings.IndexAny(u, "/"); i >= 0 {
		u = u[:i]
	}
	if h, _, err := net.SplitHostPort(u); err == nil {
		return strings.Trim(h, "[]")
	}
	return u
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// redirectListener serves TLS, and answers a plain-HTTP request on the same
// port with a redirect to the https URL instead of serving it. Each new
// connection is sniffed in its own goroutine (first byte 0x16 is a TLS
// handshake record), so a slow client never blocks Accept, and net/http
// gets a real *tls.Conn (HTTP/2, r.TLS).
type redirectListener struct {
	net.Listener
	tls   *tls.Config
	url   string
	conns chan net.Conn
	errc  chan error
	once  sync.Once
}

func (l *redirectListener) Accept() (net.Conn, error) {
	l.once.Do(func() {
		l.conns = make(chan net.Conn)
		l.errc = make(chan error, 1)
		go l.acceptLoop()
	})
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errc:
		l.errc <- err
		return nil, err
	}
}

func (l *redirectListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			l.errc <- err
			return
		}
		go l.sniff(c)
	}
}

func (l *redirectListener) sniff(c net.Conn) {
	br := bufio.NewReaderSize(c, 512)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := br.Peek(1)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return
	}
	pc := &peekedConn{Conn: c, r: br}
	if b[0] != 0x16 {
		redirect(pc, l.url)
		return
	}
	select {
	case l.conns <- tls.Server(pc, l.tls):
	case err := <-l.errc:
		l.errc <- err
		c.Close()
	}
}

type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

// Read drains the peeked bytes, then reads the connection directly so the
// small buffer is not used for the connection's life.
func (c *peekedConn) Read(p []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(p)
		}
		c.r = nil
	}
	return c.Conn.Read(p)
}

func redirect(c net.Conn, base string) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	req, err := http.ReadRequest(bufio.NewReader(c))
	target := strings.TrimRight(base, "/") + "/"
	if err == nil {
		target = strings.TrimRight(base, "/") + req.URL.RequestURI()
	}
	body := "deskrun serves HTTPS only: " + target + "\n"
	fmt.Fprintf(c, "HTTP/1.1 308 Permanent Redirect\r\nLocation: %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", target, len(body), body)
	c.Close()
}
