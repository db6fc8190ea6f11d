# The webhook image: the binary only, on a distroless base, as a non-root user.
#
#   docker build -t REGISTRY/django-migrate-webhook:0.1.0 .
#   docker push REGISTRY/django-migrate-webhook:0.1.0
#   helm install django-migrate-webhook charts/django-migrate-webhook \
#     --namespace django-migrate-system --create-namespace \
#     --set image.repository=REGISTRY/django-migrate-webhook

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && sed -i '/^\[\[test\]\]/,$d' Cargo.toml \
    && cargo build --release --locked --bin django-migrate-webhook \
    && rm -rf src
COPY Cargo.toml ./
COPY src ./src
RUN sed -i '/^\[\[test\]\]/,$d' Cargo.toml \
    && touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin django-migrate-webhook \
    && strip target/release/django-migrate-webhook

# glibc, CA certificates and a nonroot user (65532), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/django-migrate-webhook /usr/local/bin/django-migrate-webhook
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/django-migrate-webhook"]
CMD ["serve", "--tls-cert=/etc/django-migrate-webhook/tls/tls.crt", "--tls-key=/etc/django-migrate-webhook/tls/tls.key"]
