package bootserver

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	bytes    prometheus.Counter
	events   *prometheus.CounterVec
	reloads  *prometheus.CounterVec
	images   prometheus.Gauge
	dhcp     *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plinth_http_requests_total",
			Help: "HTTP requests by route and status code."}, []string{"route", "code"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "plinth_artifact_bytes_total",
			Help: "Artifact bytes sent to machines."}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plinth_boot_events_total",
			Help: "Boot events received, by stage."}, []string{"stage"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plinth_reloads_total",
			Help: "Reloads of the site and artifacts, applied or rejected."}, []string{"result"}),
		images: prometheus.NewGauge(prometheus.GaugeOpts{Name: "plinth_images",
			Help: "Images served."}),
		dhcp: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plinth_dhcp_replies_total",
			Help: "DHCP replies sent, by message type."}, []string{"type"}),
	}
	m.reg.MustRegister(m.requests, m.bytes, m.events, m.reloads, m.images, m.dhcp,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
