package decisionlog

import (
	"context"
	"strings"
	"testing"
)

// An MCP call's messages are recorded (method, tool, operation, arguments
// digest), bounded like every other field: at most limitMCP messages, each
// string cut to its limit, the caller's slice untouched, the worst case
// still one record.
func TestMCPMessagesRecorded(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	defer l.Close()
	r := sampleRecord(1)
	r.Request.MCP = []MCPMessage{{Kind: "request", Method: "tools/call", Tool: "initiate_payment", Operation: "payments:initiate",
		ArgumentsSHA256: strings.Repeat("ab", 32)}}
	checkPrepared(t, *r)
	rc, err := l.Append(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyRecord(rc.JWS, l.PublicKeys())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Request.MCP) != 1 || got.Request.MCP[0] != r.Request.MCP[0] || got.Truncated {
		t.Fatalf("recorded %+v (truncated %v)", got.Request.MCP, got.Truncated)
	}

	w := sampleRecord(2)
	ctl := strings.Repeat("\x01", limitPath)
	batch := make([]MCPMessage, limitMCP+5)
	for i := range batch {
		batch[i] = MCPMessage{Kind: ctl, Method: ctl, Tool: ctl, URI: ctl, Operation: ctl, ArgumentsSHA256: ctl}
	}
	w.Request.MCP = batch
	w.Request.Path, w.Request.Host = ctl, ctl
	rc, err = l.Append(context.Background(), w)
	if err != nil {
		t.Fatalf("worst-case MCP batch not recorded: %v", err)
	}
	got, err = VerifyRecord(rc.JWS, l.PublicKeys())
	if err != nil {
		t.Fatal(err)
	}
	if !got.Truncated || len(got.Request.MCP) != limitMCP || len(got.Request.MCP[0].Tool) != limitTool || len(got.Request.MCP[0].URI) != limitURI {
		t.Fatalf("truncated=%v, %d messages, tool %d bytes, uri %d bytes", got.Truncated, len(got.Request.MCP), len(got.Request.MCP[0].Tool), len(got.Request.MCP[0].URI))
	}
	if len(batch[0].Tool) != limitPath {
		t.Fatal("the caller's messages were cut in place")
	}
}
