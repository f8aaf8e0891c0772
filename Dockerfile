# Multi-stage build: a static sidecache binary in a distroless image, running as non-root.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/sidecache ./cmd/sidecache

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/sidecache /usr/local/bin/sidecache
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sidecache"]
CMD ["serve", "--config", "/etc/sidecache/sidecache.yaml"]
