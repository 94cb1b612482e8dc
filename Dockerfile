# The agent's image, as `cargo xtask image` builds it without a container engine: the `vigil`
# binary at /usr/bin/vigil and exactly the shared libraries its loader resolves, nothing else.
#   docker build -t vigil:0.1.0 .
# The build stage runs the project's own build (`cargo xtask setup` installs the eBPF
# toolchain: a nightly Rust, bpf-linker and LLVM), then unpacks the image's one layer.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo xtask image \
 && mkdir -p /image /rootfs \
 && tar -xf target/images/vigil-*.oci.tar -C /image \
 && layer="$(sed -n 's/.*"Layers":\["\([^"]*\)".*/\1/p' /image/manifest.json)" \
 && tar -xf "/image/$layer" -C /rootfs

FROM scratch
COPY --from=build /rootfs/ /
ENTRYPOINT ["/usr/bin/vigil"]
CMD ["run"]
