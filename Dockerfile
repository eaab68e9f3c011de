# healthprobe: multi-stage build. The builder compiles the release binary; the runtime is
# Debian slim with the binary, CA certificates and a non-root user, nothing else.

# Rust >= 1.94 is required (edition 2024, sqlx 0.9).
FROM rust:1.94-slim-bookworm AS builder
WORKDIR /src

# Dependencies first, in their own layer: a change to the service's code rebuilds only the
# service, not the ~250 crates under it. The stub sources compile against the real lock file.
# The benches are copied as they are, since Cargo.toml names them (the image builds none of
# them; a list of stubs here would fall behind the manifest).
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The service. Migrations and the AsyncAPI document are embedded or read at build time.
COPY migrations ./migrations
COPY asyncapi ./asyncapi
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin healthprobe \
    && cp target/release/healthprobe /usr/local/bin/healthprobe

FROM debian:bookworm-slim AS runtime
# ca-certificates: engines and collectors behind https.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin healthprobe
COPY --from=builder /usr/local/bin/healthprobe /usr/local/bin/healthprobe
USER 10001:10001
# Status endpoints inside the container listen on all interfaces; publish the port to
# choose who reaches them.
ENV HEALTHPROBE_HTTP_ADDR=0.0.0.0:8097 \
    HEALTHPROBE_LOG_FORMAT=json
EXPOSE 8097
ENTRYPOINT ["/usr/local/bin/healthprobe"]
CMD ["run"]
