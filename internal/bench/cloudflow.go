package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/notify"
	"github.com/deskrun/deskrun/internal/pki"
	"github.com/deskrun/deskrun/internal/wire"
)

// TargetFlowOverheadP50 is the cloud-flows issue's bound on what the
// cloud-flow layer adds to a desktop run's trigger → process start (p50).
const TargetFlowOverheadP50 = 2 * time.Millisecond

const (
	benchCloudFlow   = "bench-hook"
	benchHookID      = "bench-hook"
	benchHookSecret  = "bench_hook"
	benchHookSecretV = "bench-hook-secret-0123456789abcdef"
)

// FlowOptions configure the flow scenario.
type FlowOptions struct {
	// N webhook deliveries and N direct runs are measured, interleaved,
	// after Warmup unmeasured ones of each.
	N, Warmup int
	Env       DesktopEnvOptions
}

// FlowLayer breaks a webhook delivery down up to its desktop run's
// creation, from the flow run's and its step's timestamps. Each column is
// summarised on its own.
type FlowLayer struct {
	// Received: trigger → the flow run's created_at (HTTPS, hook lookup,
	// secret read, HMAC check, trigger document).
	Received Percentiles `json:"received"`
	// Admit: created_at → started_at (the delivery records and the
	// insert in one commit, then admission: queued and running lists and
	// the update commit).
	Admit Percentiles `json:"admit"`
	// Exec: started_at → the step's started_at (the executor goroutine
	// reads the run, its version and its steps).
	Exec Percentiles `json:"exec"`
	// Step: the step's started_at → the desktop run's created_at (the
	// step's commit, the run lookup, inputs, then the same startRun as
	// the API).
	Step Percentiles `json:"step"`
	// Reply: trigger → the 202 answer read by the client.
	Reply Percentiles `json:"reply"`
}

// FlowResult is what the flow scenario measured.
type FlowResult struct {
	SQLiteSync string `json:"sqlite_sync"`
	User       string `json:"user"`
	// Webhook: the client's clock before POST /hooks/{id} → the stamp of
	// the desktop step's process. Its API row is trigger → the desktop
	// run's created_at, i.e. the whole cloud-flow layer plus the HTTPS
	// request.
	Webhook Stages `json:"webhook"`
	// Direct: before POST /api/v1/desktopflows/{flow}/runs → the stamp.
	Direct Stages    `json:"direct"`
	Layer  FlowLayer `json:"layer"`
	// Overhead is Webhook.Total.P50 − Direct.Total.P50; LayerOverhead is
	// Webhook.API.P50 − Direct.API.P50, the same cost without the noise
	// of everything after the desktop run is created.
	Overhead      time.Duration `json:"overhead_p50_ns"`
	LayerOverhead time.Duration `json:"layer_overhead_p50_ns"`
	// PairDiff: webhook total − direct total of each interleaved pair.
	PairDiff Percentiles `json:"pair_diff"`
	// Met: Overhead ≤ 2 ms.
	Met bool `json:"met"`
}

// Flow measures webhook → desktop process start through a cloud flow with
// one desktop step, against direct runs of the same desktop flow on the
// same connection, alternating the two (ABBA) in one process.
func Flow(ctx context.Context, o FlowOptions) (*FlowResult, error) {
	if o.N <= 0 {
		return nil, errors.New("flow: N must be positive")
	}
	eo := o.Env
	eo.Users = []string{HashSHA512}
	env, err := StartDesktopEnv(ctx, eo)
	if err != nil {
		return nil, err
	}
	defer env.Close()
	h, err := env.newHook(ctx)
	if err != nil {
		return nil, err
	}
	conn := env.Connections[0]
	var web, direct stageSamples
	var received, admit, exec, step, reply, diff []time.Duration
	for k := range o.Warmup + o.N {
		measured := k >= o.Warmup
		var wt, dt time.Duration
		webFirst := k%2 == 0
		for i := range 2 {
			if (i == 0) == webFirst {
				d, err := h.deliver(ctx, k)
				if err != nil {
					return nil, err
				}
				wt = d.st.start.Sub(d.trigger)
				if measured {
					web.add(d.trigger, d.st)
					received = append(received, d.flow.CreatedAt.Sub(d.trigger))
					admit = append(admit, d.flow.StartedAt.Sub(d.flow.CreatedAt))
					exec = append(exec, d.step.StartedAt.Sub(d.flow.StartedAt))
					step = append(step, d.st.run.CreatedAt.Sub(d.step.StartedAt))
					reply = append(reply, d.reply)
				}
			} else {
				trigger := time.Now()
				r, err := env.startRun(ctx, flowPlain, conn)
				if err != nil {
					return nil, fmt.Errorf("start run: %w", err)
				}
				st, err := env.waitRun(ctx, r.ID)
				if err != nil {
					return nil, err
				}
				dt = st.start.Sub(trigger)
				if measured {
					direct.add(trigger, st)
				}
			}
		}
		if measured {
			diff = append(diff, wt-dt)
		}
	}
	res := &FlowResult{SQLiteSync: env.SQLiteSync, User: env.Users[0], Webhook: web.summary(), Direct: direct.summary(),
		Layer:    FlowLayer{Received: Summarize(received), Admit: Summarize(admit), Exec: Summarize(exec), Step: Summarize(step), Reply: Summarize(reply)},
		PairDiff: Summarize(diff)}
	res.Overhead = res.Webhook.Total.P50 - res.Direct.Total.P50
	res.LayerOverhead = res.Webhook.API.P50 - res.Direct.API.P50
	res.Met = res.Overhead <= TargetFlowOverheadP50
	env.progress("webhook→start %s; direct→start %s", res.Webhook.Total, res.Direct.Total)
	return res, nil
}

// hook posts signed deliveries to the bench's cloud flow.
type hook struct {
	env *DesktopEnv
	url string
	hc  *http.Client
}

// newHook stores the webhook's secret and applies the cloud flow through
// the API: a webhook trigger and one desktop step running the stamping
// flow on the SHA-512 user's connection.
func (e *DesktopEnv) newHook(ctx context.Context) (*hook, error) {
	if err := e.Client.Do(ctx, "PUT", "/api/v1/secrets/"+benchHookSecret, wire.SecretSet{Value: benchHookSecretV}, nil); err != nil {
		return nil, fmt.Errorf("set the webhook secret: %w", err)
	}
	def := fmt.Sprintf(`name: %s
description: webhook → the stamping desktop flow
triggers:
  webhook: {id: %s, secret: %s}
steps:
  - id: desk
    desktop:
      flow: %s
      connection: %s
`, benchCloudFlow, benchHookID, benchHookSecret, flowPlain, e.Connections[0])
	if err := e.Client.Do(ctx, "POST", "/api/v1/flows", wire.FlowApply{File: "bench-hook.yaml", Definition: def}, nil); err != nil {
		return nil, fmt.Errorf("apply the cloud flow: %w", err)
	}
	u, err := url.Parse(e.URL)
	if err != nil {
		return nil, err
	}
	cfg, err := pki.PoolConfig(e.CAPEM, u.Hostname())
	if err != nil {
		return nil, err
	}
	// Like the API client: one kept-alive connection, reused.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, MaxIdleConnsPerHost: 16, IdleConnTimeout: time.Minute}}
	return &hook{env: e, url: u.JoinPath("hooks", benchHookID).String(), hc: hc}, nil
}

// delivery is one finished webhook delivery.
type delivery struct {
	trigger time.Time
	reply   time.Duration
	flow    *wire.FlowRun
	step    *wire.FlowStep
	st      *runStamp
}

// deliver posts one signed delivery (its own body, so its own signature:
// a repeated signature is a refused replay) and waits for the flow run to
// end and its executor to be done.
func (h *hook) deliver(ctx context.Context, seq int) (*delivery, error) {
	body := fmt.Appendf(nil, `{"seq": %d}`, seq)
	d := &delivery{trigger: time.Now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(notify.SignatureHeader, notify.Sign([]byte(benchHookSecretV), time.Now(), body))
	resp, err := h.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("webhook: %w", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	d.reply = time.Since(d.trigger)
	if err != nil {
		return nil, fmt.Errorf("webhook: %w", err)
	}
	if resp.StatusCode != http.StatusAccepted {
		return nil, fmt.Errorf("webhook: %s: %s", resp.Status, b)
	}
	var fr wire.FlowRun
	if err := json.Unmarshal(b, &fr); err != nil {
		return nil, fmt.Errorf("webhook answer %s: %w", b, err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var r wire.FlowRun
		if err := h.env.Client.Do(ctx, http.MethodGet, "/api/v1/flowruns/"+fr.ID+"?wait=60s", nil, &r); err != nil {
			return nil, err
		}
		if deskrun.FlowRunState(r.State).Terminal() {
			if r.State != string(deskrun.FlowRunSucceeded) || len(r.Steps) != 1 {
				return nil, fmt.Errorf("flow run %s ended %s with %d steps: %v", r.ID, r.State, len(r.Steps), r.Error)
			}
			d.flow, d.step = &r, &r.Steps[0]
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("flow run %s still %s after 2 minutes", r.ID, r.State)
		}
	}
	run, err := h.env.world.waitRun(ctx, d.step.DesktopRunID)
	if err != nil {
		return nil, err
	}
	if d.st, err = stampOf(run); err != nil {
		return nil, err
	}
	return d, nil
}
