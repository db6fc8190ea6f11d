# The webhook image: the binary and the migration program it injects (/step.pyz), on a
# distroless base, as a non-root user, with its CycloneDX SBOM at
# /usr/share/doc/django-migrate-webhook/sbom.cdx.json and OCI labels.
#
#   docker build --build-arg REVISION="$(git rev-parse HEAD)" -t REGISTRY/django-migrate-webhook:0.1.0 .
#   docker push REGISTRY/django-migrate-webhook:0.1.0
#   helm install django-migrate-webhook charts/django-migrate-webhook \
#     --namespace django-migrate-system --create-namespace \
#     --set image.repository=REGISTRY/django-migrate-webhook
#
# Build arguments: VERSION (the image's version label; the Cargo.toml version), REVISION
# (the commit it is built from), SOURCE_URL (the repository), PROFILE (the Cargo profile of
# the binary: release, thin LTO and one codegen unit, for what ships; the test tiers build
# with test-image, the same code unoptimised, in a fraction of the time).

FROM rust:1.95-bookworm AS build
ARG PROFILE=release
# The SBOM generator: the one on PATH if it is this version (the offline test build of
# scripts/kube/build-images.sh provides it), else installed from crates.io.
ARG CARGO_CYCLONEDX_VERSION=0.5.9
RUN cargo cyclonedx --version 2>/dev/null | grep -q " ${CARGO_CYCLONEDX_VERSION}$" \
    || cargo install --locked "cargo-cyclonedx@${CARGO_CYCLONEDX_VERSION}"
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && sed -i '/^\[\[test\]\]/,$d' Cargo.toml \
    && cargo build --profile "$PROFILE" --locked --bin django-migrate-webhook \
    && rm -rf src
COPY Cargo.toml ./
COPY src ./src
RUN sed -i '/^\[\[test\]\]/,$d' Cargo.toml \
    && touch src/main.rs src/lib.rs \
    && cargo build --profile "$PROFILE" --locked --bin django-migrate-webhook \
    && install -D "target/$(if [ "$PROFILE" = dev ]; then echo debug; else echo "$PROFILE"; fi)/django-migrate-webhook" \
        /out/django-migrate-webhook \
    && strip /out/django-migrate-webhook \
    && /out/django-migrate-webhook install-code /out/code
# The SBOM of the crate just built, from the same Cargo.lock (which must stay unchanged):
# its dependencies for this platform with their versions, checksums and licences;
# build-only ones (build scripts' dependencies) have scope "excluded", dev-dependencies
# are left out.
RUN cp Cargo.lock /tmp/Cargo.lock \
    && cargo cyclonedx --format json --spec-version 1.5 --override-filename sbom.cdx \
    && cmp Cargo.lock /tmp/Cargo.lock

# glibc, CA certificates and a nonroot user (65532), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=https://github.com/django-migrate/django-migrate-webhook
LABEL org.opencontainers.image.title="django-migrate-webhook" \
      org.opencontainers.image.description="Kubernetes mutating admission webhook that makes Django migrations safe when many pods start at once" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/django-migrate-webhook /usr/local/bin/django-migrate-webhook
COPY --from=build /src/sbom.cdx.json /usr/share/doc/django-migrate-webhook/sbom.cdx.json
# The migration program at the image's root, for `codeDelivery: imageVolume`: the image is
# mounted as a volume at /django-migrate, where the step reads /django-migrate/step.pyz.
COPY --from=build --chmod=0444 /out/code/step.pyz /step.pyz
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/django-migrate-webhook"]
CMD ["serve", "--tls-cert=/etc/django-migrate-webhook/tls/tls.crt", "--tls-key=/etc/django-migrate-webhook/tls/tls.key"]
