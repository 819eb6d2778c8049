# agentauthz container image: one static binary (the shipped policies are
# compiled into it) on distroless, running as a non-root user.
#
#   docker build -t ghcr.io/agentauthz/agentauthz:0.1.0 .
#
# The image name is the one envoy/kubernetes/deployment.yaml runs. No
# container runtime exists on the machines this project is developed on, so
# this file has not been built there; `make release` builds the same binary.

FROM golang:1.27.3-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X github.com/agentauthz/agentauthz/internal/cli.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
      -o /out/agentauthz ./cmd/agentauthz

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/agentauthz /usr/local/bin/agentauthz
# 65532 is distroless's nonroot user; the Kubernetes manifests run as it.
USER 65532:65532
EXPOSE 9191 9192
ENTRYPOINT ["/usr/local/bin/agentauthz"]
CMD ["serve", "--config", "/etc/agentauthz/config/config.yaml"]
