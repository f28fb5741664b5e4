// Package notify sends deskrun's outgoing webhooks: a JSON event POSTed to
// an admin's URL, signed with HMAC-SHA256 so the receiver can tell it came
// from this server and was not replayed.
//
// Signature header (as Stripe does): X-Deskrun-Signature: t=UNIX,v1=HEX
// where HEX = hex(HMAC-SHA256(secret, "UNIX." + body)). A receiver checks
// the HMAC and refuses timestamps older than a few minutes.
package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// SignatureHeader carries the signature.
const SignatureHeader = "X-Deskrun-Signature"

// Event is what a webhook carries.
type Event struct {
	Type       string    `json:"type"` // connection.broken, connection.expiring
	At         time.Time `json:"at"`
	Connection string    `json:"connection"`
	Machine    string    `json:"machine,omitempty"`
	Username   string    `json:"username,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Status     string    `json:"status,omitempty"`
	DaysLeft   int       `json:"days_left,omitempty"`
	Message    string    `json:"message,omitempty"`
	Resolution string    `json:"resolution,omitempty"`
}

// Notifier posts events. The zero value (no URL) sends nothing.
type Notifier struct {
	URL      string
	Secret   []byte
	Client   *http.Client
	Log      *slog.Logger
	Attempts int           // default 3
	Backoff  time.Duration // first retry delay, doubling; default 1s
	Now      func() time.Time

	wg sync.WaitGroup
}

// Send posts e in the background, retrying on failure.
func (n *Notifier) Send(e Event) {
	if n == nil || n.URL == "" {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.deliver(context.Background(), e); err != nil && n.Log != nil {
			n.Log.Warn("webhook not delivered", "type", e.Type, "connection", e.Connection, "err", err)
		}
	}()
}

// Wait waits for deliveries in flight (tests, shutdown).
func (n *Notifier) Wait() { n.wg.Wait() }

func (n *Notifier) deliver(ctx context.Context, e Event) error {
	body, err := json.Marshal(e)
	if err != nil {
		return err
	}
	attempts, backoff := n.Attempts, n.Backoff
	if attempts <= 0 {
		attempts = 3
	}
	if backoff <= 0 {
		backoff = time.Second
	}
	hc := n.Client
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	var last error
	for i := range attempts {
		if i > 0 {
			time.Sleep(backoff)
			backoff *= 2
		}
		now := time.Now
		if n.Now != nil {
			now = n.Now
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.URL, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "deskrun-webhook/1")
		req.Header.Set(SignatureHeader, Sign(n.Secret, now(), body))
		resp, err := hc.Do(req)
		if err != nil {
			last = err
			continue
		}
		resp.Body.Close()
		if resp.StatusCode < 300 {
			return nil
		}
		last = fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return last
}

// Sign returns the signature header value for body at t.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + mac(secret, ts, body)
}

func mac(secret []byte, ts string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// Verify checks a signature header for body: the HMAC must match and the
// timestamp be within tolerance of now.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sig == "" {
		return fmt.Errorf("malformed %s header", SignatureHeader)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("signature timestamp is %s away from now", d.Round(time.Second))
	}
	if !hmac.Equal([]byte(sig), []byte(mac(secret, ts, body))) {
		return fmt.Errorf("signature does not match")
	}
	return nil
}
