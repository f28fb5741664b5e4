package dispatch

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the Hub's Prometheus series.
type Metrics struct {
	agentsConnected prometheus.Gauge
	jobsCreated     prometheus.Counter
	jobsFinished    *prometheus.CounterVec
}

// NewMetrics registers the Hub's series on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		agentsConnected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "deskrun_agents_connected", Help: "Agents connected to this server."}),
		jobsCreated:     prometheus.NewCounter(prometheus.CounterOpts{Name: "deskrun_jobs_created_total", Help: "Jobs created."}),
		jobsFinished:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "deskrun_jobs_finished_total", Help: "Jobs finished, by final state."}, []string{"state"}),
	}
	if reg != nil {
		reg.MustRegister(m.agentsConnected, m.jobsCreated, m.jobsFinished)
	}
	return m
}
