package web

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// keepAlive is how often an idle event stream sends a comment, so proxies
// and the browser keep it open.
const keepAlive = 15 * time.Second

// sse is a Server-Sent Events stream.
type sse struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func newSSE(w http.ResponseWriter) *sse {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	return &sse{w: w, rc: http.NewResponseController(w)}
}

// send writes one event; data may span lines.
func (s *sse) send(event, id, data string) error {
	var b strings.Builder
	if id != "" {
		b.WriteString("id: " + id + "\n")
	}
	b.WriteString("event: " + event + "\n")
	for _, line := range strings.Split(data, "\n") {
		b.WriteString("data: " + line + "\n")
	}
	b.WriteString("\n")
	if _, err := s.w.Write([]byte(b.String())); err != nil {
		return err
	}
	return s.rc.Flush()
}

func (s *sse) ping() error {
	if _, err := s.w.Write([]byte(": keep-alive\n\n")); err != nil {
		return err
	}
	return s.rc.Flush()
}

// runEvents streams a run's new output ("log", id = the chunk's seq) and
// its state changes ("state"), woken by control.RunChanged (no polling),
// and ends with "end" once the run is over and its output drained. A
// reconnecting EventSource resumes after Last-Event-ID.
func (c *Console) runEvents(w http.ResponseWriter, r *req) error {
	ctx := r.Context()
	id := r.PathValue("run")
	if _, err := c.svc.Run(ctx, id, 0); err != nil {
		return err
	}
	after, _ := strconv.ParseInt(r.Header.Get("Last-Event-ID"), 10, 64)
	if a, err := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64); err == nil && a > after {
		after = a
	}
	s := newSSE(w)
	lastState := r.URL.Query().Get("state")
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for {
		changed, drop := c.svc.RunChanged(id)
		chunks, err := c.svc.RunLog(ctx, id, after, 500)
		if err != nil {
			drop()
			return nil // the stream has started: the browser reconnects
		}
		for _, ch := range chunks {
			b, _ := json.Marshal(map[string]string{"stream": ch.Stream, "text": string(ch.Data)})
			if err := s.send("log", strconv.FormatInt(ch.Seq, 10), string(b)); err != nil {
				drop()
				return nil
			}
			after = ch.Seq
		}
		run, err := c.svc.Run(ctx, id, 0)
		if err != nil {
			drop()
			return nil
		}
		if string(run.State) != lastState {
			lastState = string(run.State)
			if err := s.send("state", "", lastState); err != nil {
				drop()
				return nil
			}
		}
		if len(chunks) == 500 {
			drop()
			continue // more output waiting
		}
		if run.State.Terminal() {
			drop()
			_ = s.send("end", "", lastState)
			return nil
		}
		select {
		case <-changed:
		case <-tick.C:
			if err := s.ping(); err != nil {
				drop()
				return nil
			}
		case <-ctx.Done():
			drop()
			return nil
		}
		drop()
	}
}

// machineEvents streams the machine table's rows ("machines", HTML): once
// at once, then each time a machine goes online or offline, woken by the
// hub (no polling).
func (c *Console) machineEvents(w http.ResponseWriter, r *req) error {
	ctx := r.Context()
	s := newSSE(w)
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	changed := c.svc.Hub.PresenceChanged()
	for {
		ms, err := c.svc.Machines(ctx)
		if err != nil {
			return nil
		}
		var buf bytes.Buffer
		if err := c.pages["machines.html"].ExecuteTemplate(&buf, "machine-rows", ms); err != nil {
			return fmt.Errorf("render machine rows: %w", err)
		}
		if err := s.send("machines", "", buf.String()); err != nil {
			return nil
		}
		for waiting := true; waiting; {
			select {
			case <-changed:
				changed, waiting = c.svc.Hub.PresenceChanged(), false
			case <-tick.C:
				if err := s.ping(); err != nil {
					return nil
				}
			case <-ctx.Done():
				return nil
			}
		}
	}
}
