//! Logs (tracing, text or JSON) and the Prometheus registry.
//!
//! Each part of the process defines and registers its own metrics (admission in
//! `server`, the certificate's expiry in `tls`, API requests in `kube_client`, the
//! controller's in `leader`, `gate`, `pod_states` and `missed`); this module only holds
//! the registry they register into and encodes it for `/metrics`.

use std::error::Error;
use std::fmt;
use std::io::IsTerminal;

use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default level (`info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second initialisation (tests) is not an error worth failing for.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// An error and its causes on one line (`outer: cause: root cause`): errors never repeat
/// their source in their own message, so logs print the chain with this.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// The registry every part registers into: every name gets the `django_migrate_` prefix.
pub fn registry() -> Registry {
    Registry::with_prefix("django_migrate")
}

/// The Prometheus text exposition of every metric in `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on 0.0.0.0:8443")]
    struct Bind(#[source] std::io::Error);

    #[test]
    fn a_chain_prints_each_cause_once() {
        let e = Bind(std::io::Error::from(std::io::ErrorKind::AddrInUse));
        assert_eq!(
            Chain(&e).to_string(),
            "cannot listen on 0.0.0.0:8443: address in use"
        );
    }
}
