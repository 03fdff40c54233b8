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
	refused  prometheus.Counter
	// refusedReports counts reports that proved no sender (the only trace
	// they leave, with the request counter).
	refusedReports prometheus.Counter
}

// newMetrics registers the server's metrics; fleet feeds the machines-by-state gauge.
func newMetrics(fleet *stateTable) *metrics {
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
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "plinth_boot_refused_total",
			Help: "Boot scripts refused: unknown machines, or a known MAC asked from an address not its own."}),
		refusedReports: prometheus.NewCounter(prometheus.CounterOpts{Name: "plinth_reports_refused_total",
			Help: "Events and journals refused: neither the machine's certificate nor its boot token, or another machine's."}),
	}
	m.reg.MustRegister(m.requests, m.bytes, m.events, m.reloads, m.images, m.dhcp, m.refused, m.refusedReports, fleetCollector{fleet},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

var machinesDesc = prometheus.NewDesc("plinth_machines", "Machines by boot state (their last stage; \"waiting\" before any contact).", []string{"state"}, nil)

// fleetCollector counts machines by state when scraped, so the gauge can
// never drift from the state table.
type fleetCollector struct{ t *stateTable }

func (c fleetCollector) Describe(ch chan<- *prometheus.Desc) { ch <- machinesDesc }

func (c fleetCollector) Collect(ch chan<- prometheus.Metric) {
	n := map[string]int{}
	for _, st := range c.t.list() {
		state := st.State
		if state == "" {
			state = "waiting"
		}
		n[state]++
	}
	for state, v := range n {
		ch <- prometheus.MustNewConstMetric(machinesDesc, prometheus.GaugeValue, float64(v), state)
	}
}
