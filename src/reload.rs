//! SIGHUP: what a reload changes, for whom, and what it keeps. The binary reads the files
//! and the command line again; everything decided about the result is here, so that it can
//! be tested without a process or a signal.
//!
//! A new generation applies to the connections accepted from the reactors' next turn on:
//! handshake rules, limits, timeouts, upstreams (an upstream removed or marked `drain` has
//! its relays closed over the drain window; one that stays keeps its health) and
//! certificates. Established connections keep what they started with. Listeners, reactors,
//! the backend and the mode cannot change without a restart: a reload that asks for that is
//! reported and the running value kept. A configuration that cannot be used changes nothing.

use std::path::Path;
use std::sync::Arc;

use crate::config::ServeArgs;
use crate::conn::AfterUpgrade;
use crate::policy::{Live, Shutdown};
use crate::tls::{SharedTlsConfig, TlsSettings};

/// What a reload starts from: the running server's settings and where to publish new ones.
pub struct Reloader {
    /// What cannot change without a restart, as the server runs it.
    fixed: Vec<(&'static str, String)>,
    after: AfterUpgrade,
    live: Arc<Live>,
    /// Wakes the reactors after a reload, so that a removed upstream drains at once.
    shutdown: Arc<Shutdown>,
    tls: Option<SharedTlsConfig>,
    /// The certificate files as started, read again by a reload without `--config`.
    tls_settings: Option<TlsSettings>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// A new generation is published. What it could not change (`kept`: a flag, the running
    /// value, the asked one) and the upstream names that do not resolve (left out until
    /// they do) are said.
    Published {
        /// The file it came from.
        from: String,
        /// Settings that need a restart: (flag, running, asked).
        kept: Vec<(&'static str, String, String)>,
        /// Upstreams left out, and why.
        unresolved: Vec<String>,
    },
    /// Without `--config`: the certificates were read again.
    Certificates,
    /// Without `--config`: the certificates could not be used (why); the running ones stay.
    CertificatesKept(String),
    /// Without `--config` or TLS there is nothing to reload.
    Nothing,
    /// The running configuration is kept, for this reason.
    Kept(String),
}

impl Reloaded {
    /// Says what happened in the log.
    pub fn log(&self) {
        match self {
            Reloaded::Published {
                from,
                kept,
                unresolved,
            } => {
                for (flag, running, asked) in kept {
                    tracing::warn!(
                        "SIGHUP: {flag} cannot change without a restart: kept {running} (the file says {asked})"
                    );
                }
                for error in unresolved {
                    tracing::warn!("SIGHUP: {error}: left out until it resolves");
                }
                tracing::info!("SIGHUP: configuration reloaded from {from}");
            }
            Reloaded::Certificates => tracing::info!("SIGHUP: TLS certificates reloaded"),
            Reloaded::CertificatesKept(why) => {
                tracing::error!("SIGHUP: kept the running TLS certificates: {why}")
            }
            Reloaded::Nothing => {
                tracing::info!("SIGHUP: nothing to reload (no --config, no --listen-tls)")
            }
            Reloaded::Kept(why) => tracing::error!("SIGHUP: kept the running configuration: {why}"),
        }
    }
}

impl Reloader {
    /// The reload of a server started with `args` (running in mode `after`), publishing on
    /// `live`.
    pub fn new(
        args: &ServeArgs,
        after: AfterUpgrade,
        live: Arc<Live>,
        shutdown: Arc<Shutdown>,
        tls: Option<SharedTlsConfig>,
    ) -> Reloader {
        Reloader {
            fixed: fixed_settings(args),
            after,
            live,
            shutdown,
            tls,
            tls_settings: args.tls_settings(),
        }
    }

    /// A reload without `--config`: the certificate files are read again; new connections
    /// get them, established ones keep theirs.
    pub fn certificates(&self) -> Reloaded {
        let (Some(shared), Some(settings)) = (self.tls.as_ref(), self.tls_settings.as_ref()) else {
            return Reloaded::Nothing;
        };
        match crate::tls::reload(shared, settings) {
            Ok(()) => Reloaded::Certificates,
            Err(error) => Reloaded::CertificatesKept(error.to_string()),
        }
    }

    /// A reload with `--config` at `path`: `parsed` is the command line with the file read
    /// again under it, or why it could not be parsed. What can change live is published for
    /// new connections.
    pub fn apply(&self, path: &Path, parsed: Result<ServeArgs, String>) -> Reloaded {
        let checked = parsed.and_then(|args| args.validate().and(args.check_host()).map(|()| args));
        let args = match checked {
            Ok(args) => args,
            Err(error) => return Reloaded::Kept(format!("{}: {error}", path.display())),
        };
        let kept = (self.fixed.iter().zip(fixed_settings(&args)))
            .filter(|((_, running), (_, asked))| running != asked)
            .map(|((flag, running), (_, asked))| (*flag, running.clone(), asked))
            .collect();
        let running = self.live.current();
        let (mut config, unresolved) = args.server_config_after(&running.conn.proxy.upstreams);
        config.conn.after = self.after;
        if let (Some(shared), Some(settings)) = (self.tls.as_ref(), args.tls_settings()) {
            if let Err(error) = crate::tls::reload(shared, &settings) {
                return Reloaded::Kept(error.to_string());
            }
        }
        self.live.publish(config.conn, config.limits);
        self.shutdown.wake_reactors();
        let from = path.display().to_string();
        Reloaded::Published {
            from,
            kept,
            unresolved,
        }
    }
}

/// The settings a reload cannot change (listeners, reactors, backend, mode), by flag, as
/// shown in the reload's warning.
fn fixed_settings(args: &ServeArgs) -> Vec<(&'static str, String)> {
    let show = |value: &dyn std::fmt::Debug| format!("{value:?}");
    vec![
        ("listen", show(&args.listen)),
        ("listen-tls", show(&args.listen_tls)),
        ("threads", show(&args.threads)),
        ("io", show(&args.io)),
        ("after", show(&args.after)),
        ("backlog", show(&args.backlog)),
        ("metrics", show(&args.metrics)),
        ("takeover", show(&args.takeover)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    fn serve_args(flags: &[&str]) -> ServeArgs {
        let argv = ["wsedge", "serve"].iter().chain(flags);
        match Cli::try_parse_from(argv).map(|cli| cli.command) {
            Ok(Command::Serve(args)) => args,
            other => panic!("{other:?}"),
        }
    }

    fn running(flags: &[&str]) -> (Reloader, Arc<Live>) {
        let args = serve_args(flags);
        let (config, _) = args.server_config_after(&[]);
        let live = Arc::new(Live::new(Arc::new(config.conn), config.limits));
        let shutdown = Arc::new(Shutdown::default());
        let after = live.current().conn.after;
        let reloader = Reloader::new(&args, after, Arc::clone(&live), shutdown, None);
        (reloader, live)
    }

    const PROXY: [&str; 4] = ["--after", "proxy", "--upstream", "127.0.0.1:9001"];

    #[test]
    fn a_reload_publishes_new_rules_limits_and_upstreams_for_new_connections() {
        let (reloader, live) = running(&PROXY);
        let next = [
            "--after",
            "proxy",
            "--upstream",
            "127.0.0.1:9002",
            "--max-connections",
            "7",
        ];
        let reloaded = reloader.apply(Path::new("wsedge.toml"), Ok(serve_args(&next)));
        assert_eq!(
            reloaded,
            Reloaded::Published {
                from: "wsedge.toml".into(),
                kept: vec![],
                unresolved: vec![]
            }
        );
        let now = live.current();
        assert_eq!(now.conn.proxy.upstreams[0].addr.port(), 9002);
        assert_eq!(now.limits.max_connections, 7);
        assert!(live.newer_than(0).is_some(), "a new generation");
    }

    #[test]
    fn what_needs_a_restart_is_kept_and_said_the_rest_applies() {
        let (reloader, live) = running(&[&PROXY[..], &["--threads", "1"]].concat());
        let next = [&PROXY[..], &["--threads", "4", "--idle-timeout-ms", "9000"]].concat();
        let Reloaded::Published { kept, .. } =
            reloader.apply(Path::new("wsedge.toml"), Ok(serve_args(&next)))
        else {
            panic!("not published");
        };
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0, "threads");
        assert_eq!(live.current().conn.idle_timeout_ms, 9000);
        assert_eq!(
            live.current().conn.after,
            AfterUpgrade::Proxy,
            "the mode stays"
        );
    }

    #[test]
    fn a_configuration_that_cannot_be_used_changes_nothing() {
        let (reloader, live) = running(&PROXY);
        let before = live.current();
        let unparsable = reloader.apply(
            Path::new("wsedge.toml"),
            Err("--max-connections: invalid digit".into()),
        );
        assert!(matches!(unparsable, Reloaded::Kept(why) if why.contains("--max-connections")));
        // Valid flags, invalid together: `--upstream` without `--after proxy`.
        let invalid = reloader.apply(
            Path::new("wsedge.toml"),
            Ok(serve_args(&["--upstream", "127.0.0.1:9002"])),
        );
        assert!(matches!(invalid, Reloaded::Kept(_)), "{invalid:?}");
        assert!(Arc::ptr_eq(&before, &live.current()));
        assert!(live.newer_than(0).is_none(), "no new generation");
    }

    #[test]
    fn without_config_or_tls_there_is_nothing_to_reload() {
        let (reloader, _) = running(&[]);
        assert_eq!(reloader.certificates(), Reloaded::Nothing);
    }
}
