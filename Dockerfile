# syntax=docker/dockerfile:1
# One multi-stage build, one small image per service:
#   docker build --target auth-service -t chat/auth-service:dev .
#   docker build --target chat-service -t chat/chat-service:dev .
#   docker build --target aggregator   -t chat/aggregator:dev .
#   docker build --target gateway      -t chat/gateway:dev .
#   docker build --target chat-backend -t chat/chat-backend:dev .   (all-in-one, embedded)
#
# Layers: cargo-chef compiles each image's dependencies from a recipe of the
# manifests alone, so a code change rebuilds only the workspace's own crates.
# Each target cooks and builds just its binary (cooking the whole workspace
# would unify dependency features across every member, and a single-binary
# build would then recompile most of them), in the `dist` profile (release,
# symbols stripped; see Cargo.toml).

FROM rust:1.95-bookworm AS chef
# rdkafka builds its bundled librdkafka with make; zlib for its compression.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version ^0.1
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build-auth-service
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --profile dist --locked -p auth-service --bin auth-service --recipe-path recipe.json
COPY . .
RUN cargo build --profile dist --locked -p auth-service --bin auth-service

FROM chef AS build-chat-service
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --profile dist --locked -p chat-service --bin chat-service --recipe-path recipe.json
COPY . .
RUN cargo build --profile dist --locked -p chat-service --bin chat-service

FROM chef AS build-aggregator
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --profile dist --locked -p aggregator --bin aggregator --recipe-path recipe.json
COPY . .
RUN cargo build --profile dist --locked -p aggregator --bin aggregator

FROM chef AS build-gateway
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --profile dist --locked -p gateway --bin gateway --recipe-path recipe.json
COPY . .
RUN cargo build --profile dist --locked -p gateway --bin gateway

FROM chef AS build-chat-backend
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --profile dist --locked -p chat-backend --bin chat-backend --recipe-path recipe.json
COPY . .
RUN cargo build --profile dist --locked -p chat-backend --bin chat-backend

FROM debian:bookworm-slim AS runtime
# curl only for container health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin app \
 && mkdir /data && chown app /data && chmod 0700 /data
USER 10001
WORKDIR /data
ENV DATA_DIR=/data LOG_FORMAT=json

FROM runtime AS auth-service
COPY --from=build-auth-service /src/target/dist/auth-service /usr/local/bin/
ENV AUTH_LISTEN=0.0.0.0:8081
EXPOSE 8081
ENTRYPOINT ["auth-service"]

FROM runtime AS chat-service
COPY --from=build-chat-service /src/target/dist/chat-service /usr/local/bin/
ENV CHAT_LISTEN=0.0.0.0:8082
EXPOSE 8082
ENTRYPOINT ["chat-service"]

FROM runtime AS aggregator
COPY --from=build-aggregator /src/target/dist/aggregator /usr/local/bin/
ENV AGGREGATOR_LISTEN=0.0.0.0:8083
EXPOSE 8083
ENTRYPOINT ["aggregator"]

FROM runtime AS gateway
COPY --from=build-gateway /src/target/dist/gateway /usr/local/bin/
ENV GATEWAY_LISTEN=0.0.0.0:8084
EXPOSE 8084
ENTRYPOINT ["gateway"]

FROM runtime AS chat-backend
COPY --from=build-chat-backend /src/target/dist/chat-backend /usr/local/bin/
ENV LISTEN=0.0.0.0:8080
EXPOSE 8080
VOLUME ["/data"]
ENTRYPOINT ["chat-backend"]
