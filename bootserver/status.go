package bootserver

import (
	_ "embed"
	"html/template"
	"net/http"
)

//go:embed status.html
var statusHTML string

var statusTmpl = template.Must(template.New("status").Parse(statusHTML))

func (s *Server) statusPage(w http.ResponseWriter, r *http.Request) {
	snap := s.snap.Load()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	fleet := s.state.list()
	_ = statusTmpl.Execute(w, map[string]any{
		"Site":     snap.site.Name,
		"Count":    len(fleet),
		"Machines": fleet,
		"Images":   len(snap.images),
	})
}
