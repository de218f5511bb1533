# Two stages: build the release binary, then ship it alone on a slim Debian.
# Pages and static files are compiled into the binary, so nothing else is copied.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# `.git` is not in the build context: pass the commit for `scenecast --version`,
#   docker build --build-arg SCENECAST_COMMIT=$(git rev-parse --short HEAD) -t scenecast .
# (build.rs reads it; without it the version says "commit unknown").
ARG SCENECAST_COMMIT=
RUN cargo build --release --locked --bin scenecast

FROM debian:bookworm-slim
RUN useradd --system --no-create-home scenecast
COPY --from=build /src/target/release/scenecast /usr/local/bin/scenecast
USER scenecast
WORKDIR /home/scenecast
# Containers listen on all interfaces; everything else comes from SCENECAST__* env
# (there is no config file in the image):
#   docker run -e SCENECAST__AUTH__CLIENT_TOKENS=... -e SCENECAST__AUTH__API_TOKENS=... -p 9502:9502 scenecast
ENV SCENECAST__SERVER__BIND=0.0.0.0:9502 \
    RUST_LOG=info
EXPOSE 9502
STOPSIGNAL SIGTERM
ENTRYPOINT ["scenecast", "serve"]
