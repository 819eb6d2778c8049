package decisionlog

import (
	"strings"
	"time"
)

// EXPERIMENT (#24): the bench builds select a commit variant with
// go build -ldflags "-X github.com/agentauthz/agentauthz/internal/decisionlog.experiment=leader" (or yield, window=500us).
var experiment string

func applyExperiment(o *Options) {
	switch {
	case experiment == "yield":
		o.yield = true
	case experiment == "leader":
		o.leader = true
	case strings.HasPrefix(experiment, "window="):
		d, err := time.ParseDuration(strings.TrimPrefix(experiment, "window="))
		if err == nil {
			o.commitWindow = d
		}
	}
}
