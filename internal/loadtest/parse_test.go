package loadtest

import (
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
)

func TestParseMix(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: DefaultMix, want: DefaultMix},
		{in: " revoked=1 , peer-allow=3", want: "peer-allow=3,revoked=1"},
		{in: "peer-allow=0,xfcc-allow=2", want: "xfcc-allow=2"},
		{in: "", err: "all weights are zero"},
		{in: "peer-allow=0", err: "all weights are zero"},
		{in: "peer-allow", err: "want kind=weight"},
		{in: "admin=1", err: "unknown kind"},
		{in: "peer-allow=-1", err: "weight must be"},
		{in: "peer-allow=1001", err: "weight must be"},
		{in: "peer-allow=x", err: "weight must be"},
	} {
		m, err := ParseMix(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseMix(%q) error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || m.String() != tc.want {
			t.Errorf("ParseMix(%q) = %q, %v; want %q", tc.in, m.String(), err, tc.want)
		}
	}
}

// FuzzParseMix: a mix that parses prints in a form that parses to the same mix.
func FuzzParseMix(f *testing.F) {
	f.Add(DefaultMix)
	f.Add("peer-allow=1")
	f.Add("=,=,")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMix(s)
		if err != nil {
			return
		}
		again, err := ParseMix(m.String())
		if err != nil || again.String() != m.String() {
			t.Fatalf("round trip of %q: %q, %v", m.String(), again.String(), err)
		}
	})
}

func TestStatusCode(t *testing.T) {
	for _, code := range []int32{codeOK, codePermissionDenied, codeUnauthenticated} {
		resp := &authv3.CheckResponse{Status: &status.Status{Code: code, Message: "m"},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}}
		b, err := proto.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		if got := statusCode(b); got != code {
			t.Errorf("statusCode = %d, want %d", got, code)
		}
	}
	if got := statusCode(nil); got != -1 {
		t.Errorf("statusCode(nil) = %d, want -1", got)
	}
	if got := statusCode([]byte{0x0a, 0x05, 0x08}); got != -1 {
		t.Errorf("statusCode(truncated) = %d, want -1", got)
	}
}

// FuzzStatusCode: the scanner agrees with proto.Unmarshal on every input
// proto accepts, and never panics on the rest.
func FuzzStatusCode(f *testing.F) {
	ok, _ := proto.Marshal(&authv3.CheckResponse{Status: &status.Status{Code: 7}})
	f.Add(ok)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		got := statusCode(b)
		var resp authv3.CheckResponse
		if err := proto.Unmarshal(b, &resp); err != nil || resp.Status == nil {
			return
		}
		if got != resp.Status.Code {
			t.Fatalf("statusCode = %d, proto says %d", got, resp.Status.Code)
		}
	})
}

func TestParseCPULine(t *testing.T) {
	for _, tc := range []struct {
		line               string
		idle, steal, total uint64
	}{
		// user nice system idle iowait irq softirq steal guest guest_nice
		{"cpu  100 2 30 400 5 6 7 8 9 0", 405, 8, 558},
		{"cpu 1 2 3 4 5 6 7 8", 9, 8, 36},
		{"cpu0 1 2 3 4 5 6 7 8", 0, 0, 0}, // a single CPU's line is not the aggregate
		{"cpu 1 2 3", 0, 0, 0},
		{"cpu 1 2 3 x 5 6 7 8", 0, 0, 0},
		{"", 0, 0, 0},
	} {
		idle, steal, total := parseCPULine(tc.line)
		if idle != tc.idle || steal != tc.steal || total != tc.total {
			t.Errorf("parseCPULine(%q) = %d, %d, %d; want %d, %d, %d", tc.line, idle, steal, total, tc.idle, tc.steal, tc.total)
		}
	}
}

func TestParseVmHWM(t *testing.T) {
	for _, tc := range []struct {
		status string
		want   int64
	}{
		{"Name:\tagentauthz\nVmPeak:\t 1000 kB\nVmHWM:\t  107336 kB\nVmRSS:\t 5 kB\n", 107336 * 1024},
		{"VmHWM: 1 kB", 1024},
		{"VmRSS:\t 5 kB\n", 0},
		{"VmHWM:\t 12 MB\n", 0},
		{"VmHWM:\t -3 kB\n", 0},
		{"VmHWM:\t x kB\n", 0},
		{"", 0},
	} {
		if got := parseVMHWM(tc.status); got != tc.want {
			t.Errorf("parseVMHWM(%q) = %d, want %d", tc.status, got, tc.want)
		}
	}
}
