# syntax=docker/dockerfile:1
# One multi-stage build, one small image per service:
#   docker build --target auth-service -t chat/auth-service .
#   docker build --target chat-service -t chat/chat-service .
#   docker build --target aggregator   -t chat/aggregator .
#   docker build --target chat-backend -t chat/chat-backend .   (all-in-one, embedded)
# The binaries are built by scripts/build-binaries, the same script CI runs.

FROM rust:1.95-bookworm AS build
# rdkafka builds its bundled librdkafka with make; zlib for its compression.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
ENV CARGO_TARGET_DIR=/src/target
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    ./scripts/build-binaries --release \
 && mkdir -p /out \
 && cp target/release/auth-service target/release/chat-service \
       target/release/aggregator target/release/chat-backend /out/

FROM debian:bookworm-slim AS runtime
# curl only for container health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin app \
 && mkdir /data && chown app /data
USER 10001
WORKDIR /data
ENV DATA_DIR=/data LOG_FORMAT=json

FROM runtime AS auth-service
COPY --from=build /out/auth-service /usr/local/bin/
ENV AUTH_LISTEN=0.0.0.0:8081
EXPOSE 8081
ENTRYPOINT ["auth-service"]

FROM runtime AS chat-service
COPY --from=build /out/chat-service /usr/local/bin/
ENV CHAT_LISTEN=0.0.0.0:8082
EXPOSE 8082
ENTRYPOINT ["chat-service"]

FROM runtime AS aggregator
COPY --from=build /out/aggregator /usr/local/bin/
ENV AGGREGATOR_LISTEN=0.0.0.0:8083
EXPOSE 8083
ENTRYPOINT ["aggregator"]

FROM runtime AS chat-backend
COPY --from=build /out/chat-backend /usr/local/bin/
ENV LISTEN=0.0.0.0:8080
EXPOSE 8080
VOLUME ["/data"]
ENTRYPOINT ["chat-backend"]
