package loadtest

import (
	"context"
	"testing"

	"google.golang.org/protobuf/proto"
)

func BenchmarkTmpCheckMarshal(b *testing.B) {
	cfg, reqs := benchSetup(b)
	svc := assemble(b, cfg, "sync")
	for _, k := range []Kind{PeerAllow, PolicyDeny} {
		req := reqs[k]
		b.Run(string(k), func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					resp, err := svc.Check(ctx, req)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := proto.Marshal(resp); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
