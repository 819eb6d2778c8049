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
	got := recordAt(t, o, rc)
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
	got = recordAt(t, o, rc)
	if !got.Truncated || len(got.Request.MCP) != limitMCP || len(got.Request.MCP[0].Tool) != limitTool || len(got.Request.MCP[0].URI) != limitURI {
		t.Fatalf("truncated=%v, %d messages, tool %d bytes, uri %d bytes", got.Truncated, len(got.Request.MCP), len(got.Request.MCP[0].Tool), len(got.Request.MCP[0].URI))
	}
	if len(batch[0].Tool) != limitPath {
		t.Fatal("the caller's messages were cut in place")
	}
}

// recordAt reads the record a receipt names from the log's files, after
// checking the receipt.
func recordAt(t *testing.T, o Options, rc Receipt) *Record {
	t.Helper()
	ks, err := LoadKeySet(o.KeyDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyReceipt(rc.Header, ks); err != nil {
		t.Fatal(err)
	}
	records, _, _ := logLines(t, o.Dir)
	if LeafHash(records[rc.Index]) != rc.Hash {
		t.Fatalf("record %d is not the one the receipt names", rc.Index)
	}
	r, err := decodeRecordLine(records[rc.Index])
	if err != nil {
		t.Fatal(err)
	}
	return r
}
